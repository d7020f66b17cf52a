"""Single-process inference on a pretrained ``moe_pretrain`` model directory.

A model directory is what :func:`mai_models.lm.launch.finalize` writes: ``checkpoint/`` (a
``dist_checkpointing`` checkpoint with model, optimizer and RNG state), ``model.json`` (preset and
training config, model overrides included) and ``tokenizer.json``. :func:`load_pretrained` rebuilds the
exact ``GPTModel`` from ``model.json`` and the tokenizer's vocabulary (as the trainer does), loads only
the model weights and returns a :class:`MegatronLM` in eval mode.

Logits are returned over the tokenizer's vocabulary: Megatron pads the output layer to a multiple of
``make_vocab_size_divisible_by``, and the padding rows are never a real token, so they are dropped and
can never be generated.

Generation runs on a key-value cache (``mai_models.lm.kv_cache``): one forward over the prompts, then
one single-token forward per new token for the whole batch. ``generate_ids_batch`` runs many prompts
through one cache, left-padded; ``stream_ids`` is the same path with one row.

torch and Megatron are imported inside the functions: importing this module is cheap.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mai_models.errors import MaiUserError
from mai_models.generation import TextGeneration
from mai_models.lm.sampling import SamplingParams, batch_tokens

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from tokenizers import Tokenizer

    from mai_models.lm.model_config import MoEModelConfig
    from mai_models.lm.telemetry import RouterMonitor

MODEL_CARD = "model.json"
CHECKPOINT_DIR = "checkpoint"
TOKENIZER_FILE = "tokenizer.json"


def resolve_checkpoint(model_dir: Path) -> Path:
    """The final checkpoint of a model directory.

    ``finalize`` copies the final checkpoint itself to ``checkpoint/``; a training work directory keeps
    ``checkpoints/iter_*``. Both are accepted so a run can be inspected before it is finalised.
    """
    from mai_models.lm.dist_checkpoint import checkpoint_dirs

    for name in (CHECKPOINT_DIR, "checkpoints"):
        root = model_dir / name
        if (root / "metadata.json").is_file():
            return root
        found = checkpoint_dirs(root)
        if found:
            return found[-1]
    raise MaiUserError(f"no checkpoint under {model_dir}/{CHECKPOINT_DIR}: run `mai lm train` first")


def read_model_config(model_dir: Path) -> tuple[MoEModelConfig, dict[str, Any]]:
    """The model config a run trained (preset + overrides + tokenizer vocabulary) and its card."""
    from mai_models.lm.train_config import TrainConfig, resolve_model_config
    from mai_models.tokenizer.bpe import load_tokenizer

    card_path = model_dir / MODEL_CARD
    if not card_path.is_file():
        raise MaiUserError(f"{card_path} not found: not a moe_pretrain model directory")
    card = json.loads(card_path.read_text())
    train = TrainConfig.model_validate(card["train"])
    # The trainer sizes the vocabulary from the tokenizer, so the same rule rebuilds the same shapes.
    vocab = load_tokenizer(model_dir).get_vocab_size()
    return resolve_model_config(train, vocab_size=vocab), card


def _ensure_single_process_parallel(seed: int) -> None:
    """Megatron's parallel state for one process (TP = PP = EP = 1), kept if already set up so.

    Re-initialising would replace the process groups under models built earlier in this process
    (tests load several models), so an existing size-1 layout is reused as is.
    """
    from megatron.core import parallel_state

    from mai_models.lm.model_config import ParallelConfig
    from mai_models.lm.process_groups import init_parallel

    if parallel_state.model_parallel_is_initialized():
        sizes = (
            parallel_state.get_tensor_model_parallel_world_size(),
            parallel_state.get_pipeline_model_parallel_world_size(),
            parallel_state.get_expert_model_parallel_world_size(),
        )
        if sizes == (1, 1, 1):
            return
    init_parallel(ParallelConfig(), seed)


def load_model_weights(model: torch.nn.Module, checkpoint: Path) -> None:
    """Load only the model's tensors from a ``dist_checkpointing`` checkpoint (optimizer skipped)."""
    from megatron.core import dist_checkpointing

    from mai_models.lm.dist_checkpoint import load_model_state, model_sharded_state

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # The trainer saves through Megatron DDP, whose keys carry a "module." prefix; a checkpoint
            # of a bare GPTModel has none. The checkpoint's own key list says which it is.
            keys = dist_checkpointing.load_tensors_metadata(str(checkpoint))
            prefix = "module." if any(k.startswith("module.") for k in keys) else ""
            sharded = model_sharded_state(model, prefix)
            loaded = dist_checkpointing.load({"model": sharded}, str(checkpoint))["model"]
    except Exception as exc:  # torch/megatron raise many types for truncated or garbled files
        raise MaiUserError(
            f"checkpoint {checkpoint} is corrupt or incompatible: {type(exc).__name__}: {exc}"[:400]
        ) from exc
    load_model_state(model, loaded, prefix, checkpoint)


def load_pretrained(model_dir: Path, seed: int = 1234) -> MegatronLM:
    """Rebuild and load a pretrained model from ``model_dir`` in this process, in eval mode.

    CPU (fp32, with the CPU patches) unless CUDA is available (then bf16, as trained). Initialises
    Megatron's parallel state for world size 1 (and seeds the global RNGs with ``seed``, as
    ``init_parallel`` does) unless it is already initialised for one process.
    """
    import torch

    from mai_models.lm.model import build_model
    from mai_models.lm.model_config import ParallelConfig
    from mai_models.tokenizer.bpe import load_tokenizer

    model_dir = Path(model_dir)
    cfg, card = read_model_config(model_dir)
    checkpoint = resolve_checkpoint(model_dir)
    if not torch.cuda.is_available():
        from mai_models.lm.cpu_compat import apply_cpu_patches

        apply_cpu_patches()
    _ensure_single_process_parallel(seed)
    model = build_model(cfg, ParallelConfig())
    load_model_weights(model, checkpoint)
    model.eval()
    return MegatronLM(model, cfg, load_tokenizer(model_dir), model_dir=model_dir, card=card)


class MegatronLM(TextGeneration):
    """A loaded Megatron ``GPTModel`` with its config and tokenizer: logits, router stats, generation."""

    def __init__(
        self,
        model: torch.nn.Module,
        config: MoEModelConfig,
        tokenizer: Tokenizer,
        model_dir: Path | None = None,
        card: dict[str, Any] | None = None,
    ) -> None:
        self.model = model
        self.config = config
        self.tokenizer = tokenizer
        self.model_dir = model_dir
        self.card = card or {}

    # ------------------------------------------------------------------------------------- properties
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def vocab_size(self) -> int:
        """The tokenizer's vocabulary: the width of :meth:`logits` (Megatron's padding is dropped)."""
        return self.config.vocab_size

    @property
    def max_length(self) -> int:
        """The longest context the model was built for (RoPE positions beyond it were never trained)."""
        return self.config.seq_length

    @property
    def eod_id(self) -> int | None:
        """The document separator (``<|endoftext|>``): what precedes a document in training."""
        from mai_models.tokenizer.bpe import EOD_TOKEN

        return self.tokenizer.token_to_id(EOD_TOKEN)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text).ids

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)

    # ----------------------------------------------------------------------------------------- logits
    def logits(self, token_ids: torch.Tensor | Sequence[Sequence[int]]) -> torch.Tensor:
        """Next-token logits ``[B, T, V]`` (fp32, no grad, on the model's device) for ``[B, T]`` ids.

        ``T`` may not exceed :attr:`max_length`; ``V`` is the tokenizer vocabulary.
        """
        import torch

        ids = torch.as_tensor(token_ids, dtype=torch.long)
        if ids.dim() != 2 or ids.shape[1] == 0:
            raise ValueError(f"token_ids must be [batch, time] with time >= 1, got shape {tuple(ids.shape)}")
        if ids.shape[1] > self.max_length:
            raise ValueError(f"sequence of {ids.shape[1]} tokens exceeds the model's {self.max_length}")
        if int(ids.min()) < 0 or int(ids.max()) >= self.vocab_size:
            raise ValueError(f"token ids must lie in [0, {self.vocab_size})")
        ids = ids.to(self.device)
        positions = torch.arange(ids.shape[1], device=ids.device).unsqueeze(0).expand_as(ids)
        with torch.no_grad():
            # No mask: the attention runs causal (SDPA is_causal), as in training.
            out = self.model(ids, positions, None)
        return out[..., : self.vocab_size].float()

    def router_monitor(self) -> RouterMonitor:
        """A :class:`RouterMonitor` hooked into this model's routers; call ``.remove()`` when done."""
        from mai_models.lm.telemetry import RouterMonitor

        topk = self.config.moe_router_topk if self.config.is_moe else 1
        return RouterMonitor(self.model, topk)

    def logits_with_router_stats(
        self, token_ids: torch.Tensor | Sequence[Sequence[int]]
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """:meth:`logits` plus the routing of exactly this batch: per MoE layer ``tokens_per_expert``,
        ``load_imbalance`` (max/mean), normalised ``router_entropy`` and ``dropped_token_rate``
        (``{}`` for a dense model)."""
        monitor = self.router_monitor()
        try:
            logits = self.logits(token_ids)
            stats = monitor.collect()
        finally:
            monitor.remove()
        return logits, stats

    # ------------------------------------------------------------------------------------- generation
    # The signature of mai_models.generation; generate, stream and generate_ids come from TextGeneration.
    def encode_prompt(self, prompt: str) -> list[int]:
        """A text prompt starts a document: the training stream put an EOD right before it."""
        eod = self.eod_id
        return [eod, *self.encode(prompt)] if eod is not None else self.encode(prompt)

    def _params(
        self,
        max_new_tokens: int,
        temperature: float,
        top_p: float,
        stop: Collection[int] | None,
        seed: int | None,
    ) -> SamplingParams:
        if max_new_tokens < 0:
            raise ValueError("max_new_tokens must be >= 0")
        if temperature < 0:
            raise ValueError("temperature must be >= 0")
        if not 0 < top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        if stop is None:  # the model's own end token
            stop = () if self.eod_id is None else (self.eod_id,)
        return SamplingParams(max_new_tokens, temperature, top_p, frozenset(int(t) for t in stop), seed)

    def _prompt(self, prompt_ids: Sequence[int]) -> list[int]:
        ids = [int(t) for t in prompt_ids]
        if not ids:
            raise ValueError("prompt_ids must hold at least one token (e.g. the end-of-document id)")
        return ids

    def stream_ids(
        self,
        prompt_ids: Sequence[int],
        *,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_p: float = 1.0,
        stop: Collection[int] | None = None,
        seed: int | None = None,
    ) -> Iterator[int]:
        """Yield up to ``max_new_tokens`` new token ids one at a time.

        Greedy (argmax) when ``temperature == 0``; otherwise samples from ``softmax(logits / T)``
        restricted to the smallest set of tokens whose probability reaches ``top_p`` (nucleus), with a
        private generator seeded by ``seed`` (None: nondeterministic). A token in ``stop`` (None: the
        EOD) ends the stream and is not yielded. The context is cut to the last :attr:`max_length`
        tokens.
        """
        from mai_models.lm.kv_cache import MegatronKVBatch

        params = self._params(max_new_tokens, temperature, top_p, stop, seed)
        ids = self._prompt(prompt_ids)
        for _, token in batch_tokens(MegatronKVBatch(self, max_new_tokens), [ids], [params]):
            yield token

    def generate_ids_batch(
        self,
        prompts_ids: Sequence[Sequence[int]],
        *,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_p: float = 1.0,
        stop: Collection[int] | None = None,
        seed: int | None = None,
        batch_size: int = 32,
    ) -> list[list[int]]:
        """:meth:`generate_ids` of every prompt, ``batch_size`` prompts per forward pass. Prompts of
        similar length share a batch, so that little of it is padding; where the attention takes no
        padding mask (``kv_cache.supports_padding``), only prompts of one length do."""
        from mai_models.lm.kv_cache import MegatronKVBatch, supports_padding

        params = self._params(max_new_tokens, temperature, top_p, stop, seed)
        prompts = [self._prompt(p)[-self.max_length :] for p in prompts_ids]
        outputs: list[list[int]] = [[] for _ in prompts]
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        chunks: list[list[int]] = []
        padding = supports_padding(self.model)
        for i in order:
            fits = chunks and len(chunks[-1]) < batch_size
            if fits and (padding or len(prompts[chunks[-1][0]]) == len(prompts[i])):
                chunks[-1].append(i)
            else:
                chunks.append([i])
        for chunk in chunks:
            batch = MegatronKVBatch(self, max_new_tokens)
            for row, token in batch_tokens(batch, [prompts[i] for i in chunk], [params] * len(chunk)):
                outputs[chunk[row]].append(token)
        return outputs
