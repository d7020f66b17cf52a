"""Byte-level BPE tokenizer trained on the clean train split, saved in the Hugging Face layout.

The saved directory loads offline with ``AutoTokenizer.from_pretrained`` (and so with Megatron's
``huggingface`` tokenizer library) and carries a ChatML chat template for the later chat export.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from mai_models.config import TokenizerConfig
from mai_models.errors import MaiUserError

EOD_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
IM_START_TOKEN = "<|im_start|>"
IM_END_TOKEN = "<|im_end|>"
SYSTEM_TOKEN = "<|system|>"
USER_TOKEN = "<|user|>"
ASSISTANT_TOKEN = "<|assistant|>"
# Order fixes the ids: the trainer assigns special tokens first, so EOD is id 0 and PAD is id 1.
SPECIAL_TOKENS = (
    EOD_TOKEN,
    PAD_TOKEN,
    IM_START_TOKEN,
    IM_END_TOKEN,
    SYSTEM_TOKEN,
    USER_TOKEN,
    ASSISTANT_TOKEN,
)
EOD_ID = 0
PAD_ID = 1

# Standard ChatML (role written as text after <|im_start|>) so that chat tooling expecting ChatML works
# unchanged; the single-token role markers stay reserved in the vocabulary.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

TOKENIZER_FILE = "tokenizer.json"
_READ_BATCH_ROWS = 1024


def split_shards(clean_dir: Path, split: str) -> list[Path]:
    """The clean Parquet shards of one split, in index order (file names are zero-padded)."""
    return sorted(clean_dir.glob(f"{split}-*.parquet"))


def iter_texts(shards: list[Path], batch_rows: int = _READ_BATCH_ROWS) -> Iterator[list[str]]:
    """Texts in shard order, one record batch at a time, so a corpus never sits in memory whole."""
    for shard in shards:
        for batch in pq.ParquetFile(shard).iter_batches(batch_size=batch_rows, columns=["text"]):
            yield batch.column(0).to_pylist()


def count_docs_bytes(shards: list[Path]) -> tuple[int, int]:
    """Documents and UTF-8 bytes of text, read from the text column itself (not the n_bytes metadata)."""
    docs = n_bytes = 0
    for shard in shards:
        text = pq.read_table(shard, columns=["text"]).column("text")
        docs += len(text)
        n_bytes += pc.sum(pc.binary_length(text)).as_py() or 0
    return docs, n_bytes


def _new_tokenizer() -> Tokenizer:
    tok = Tokenizer(models.BPE())
    # No prefix space: "Hello" at document start and " Hello" mid-text stay different tokens, and
    # decode(encode(text)) == text holds exactly.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return tok


def train_tokenizer(cfg: TokenizerConfig, clean_dir: Path, out_dir: Path) -> dict:
    """Train byte-level BPE on the train split's text, save it to ``out_dir``; return deterministic stats."""
    shards = split_shards(clean_dir, "train")
    train_docs, train_bytes = count_docs_bytes(shards)
    if train_docs == 0:
        raise MaiUserError(f"{clean_dir}: the train split has no documents; cannot train a tokenizer")

    tok = _new_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size,
        min_frequency=cfg.min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        # Every byte gets a token even if the corpus lacks it, so no input can ever be unencodable.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    texts = (t for batch in iter_texts(shards) for t in batch)
    tok.train_from_iterator(texts, trainer=trainer, length=train_docs)
    if tok.token_to_id(EOD_TOKEN) != EOD_ID or tok.token_to_id(PAD_TOKEN) != PAD_ID:
        raise RuntimeError("special token ids moved: SPECIAL_TOKENS must stay first in the vocabulary")

    out_dir.mkdir(parents=True, exist_ok=True)
    _save_hf(tok, out_dir)
    return {
        "vocab_size": tok.get_vocab_size(),
        "train_docs": train_docs,
        "train_bytes": train_bytes,
        "special_tokens": list(SPECIAL_TOKENS),
        "eod_id": EOD_ID,
    }


def copy_tokenizer(source_dir: Path, out_dir: Path) -> dict:
    """A frozen tokenizer: ``source_dir``'s tokenizer.json byte for byte, with the Hugging Face files
    around it written as a trained one has them; returns the stats a trained tokenizer reports."""
    tok = load_tokenizer(source_dir)
    if tok.token_to_id(EOD_TOKEN) != EOD_ID or tok.token_to_id(PAD_TOKEN) != PAD_ID:
        raise MaiUserError(
            f"{source_dir / TOKENIZER_FILE}: its special tokens are not the ids this pipeline uses"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    _save_hf(tok, out_dir)
    # Byte for byte, not re-serialised: a warm start compares the files to prove the ids still mean
    # what the parent learnt.
    (out_dir / TOKENIZER_FILE).write_bytes((source_dir / TOKENIZER_FILE).read_bytes())
    return {"vocab_size": tok.get_vocab_size(), "special_tokens": list(SPECIAL_TOKENS), "eod_id": EOD_ID}


def _save_hf(tok: Tokenizer, out_dir: Path) -> None:
    # transformers is imported here: it is slow to import and only this step needs it.
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        # GPT-2 convention: one document separator doubles as bos/eos, and byte-level BPE never needs unk.
        bos_token=EOD_TOKEN,
        eos_token=EOD_TOKEN,
        unk_token=EOD_TOKEN,
        pad_token=PAD_TOKEN,
        extra_special_tokens=list(SPECIAL_TOKENS[2:]),
    )
    hf.chat_template = CHAT_TEMPLATE
    # save_jinja_files=False keeps the template inside tokenizer_config.json, where older loaders look.
    hf.save_pretrained(str(out_dir), save_jinja_files=False)

    config_path = out_dir / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    # transformers 5 writes its internal class name (TokenizersBackend), which transformers 4 loaders
    # (vLLM, lm-eval, older Megatron images) do not know; PreTrainedTokenizerFast loads in both.
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    # Same reason: transformers 4 expects a dict under extra_special_tokens, while both read this key.
    config["additional_special_tokens"] = config.pop("extra_special_tokens")
    config_path.write_text(
        json.dumps(config, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    # transformers 5 no longer writes special_tokens_map.json; older readers still expect it.
    special_map = {
        "bos_token": EOD_TOKEN,
        "eos_token": EOD_TOKEN,
        "unk_token": EOD_TOKEN,
        "pad_token": PAD_TOKEN,
        "additional_special_tokens": list(SPECIAL_TOKENS[2:]),
    }
    (out_dir / "special_tokens_map.json").write_text(
        json.dumps(special_map, indent=2) + "\n", encoding="utf-8"
    )


def load_tokenizer(tokenizer_dir: Path) -> Tokenizer:
    """The trained ``tokenizers.Tokenizer`` in ``tokenizer_dir``; one-line MaiUserError if absent/broken."""
    path = tokenizer_dir / TOKENIZER_FILE
    if not path.is_file():
        raise MaiUserError(f"{path} not found: train the tokenizer first")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a bare Exception for malformed JSON
        raise MaiUserError(f"{path}: not a readable tokenizer ({str(exc).splitlines()[0][:120]})") from exc
