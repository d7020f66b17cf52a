"""Our models inside lm-evaluation-harness: ``lm_eval --model mai --model_args hf_dir=...`` (or
``megatron_dir=...``, ``ngram=...``) once this module is imported; importing it registers ``mai``.

Every request is scored the way the training stream presented text: an EOD token before the context
(documents followed an EOD in the packed shards) and greedy decoding only (sampling options ignored).
"""

from __future__ import annotations

import logging
from typing import Any

from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from mai_models.eval.scoring import ScoringModel, load_scoring_model
from mai_models.generation import TextGenerator

log = logging.getLogger(__name__)

DEFAULT_MAX_GEN_TOKS = 256


@register_model("mai")
class MaiLM(LM):
    def __init__(
        self,
        hf_dir: str | None = None,
        megatron_dir: str | None = None,
        ngram: str | None = None,
        device: str | None = None,
        max_length: int | None = None,
        max_gen_toks: int = DEFAULT_MAX_GEN_TOKS,
        scoring_model: ScoringModel | None = None,
        batch_size: Any = None,  # lm-eval passes these to every model; requests are scored one by one
        max_batch_size: Any = None,
        **unused: Any,
    ) -> None:
        super().__init__()
        if unused:
            log.warning("mai model ignores unknown model_args: %s", ", ".join(sorted(unused)))
        self.model: ScoringModel = scoring_model or load_scoring_model(
            hf_dir=hf_dir,
            megatron_dir=megatron_dir,
            ngram=ngram,
            device=device or "cpu",
            max_length=max_length,
        )
        self.max_gen_toks = int(max_gen_toks)

    @property
    def tokenizer_name(self) -> str:
        return self.model.name

    def _split_request(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """Context and continuation ids as the tokenizer would see the joined text.

        Trailing spaces of the context move to the continuation (BPE attaches a space to the word
        after it), and the continuation ids are read off the joint encoding so that a token spanning
        the boundary is not counted twice.
        """
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        whole = self.model.encode(context + continuation)
        ctx = self.model.encode(context) if context else []
        if whole[: len(ctx)] != ctx or len(whole) == len(ctx):
            return ctx, self.model.encode(continuation)
        return ctx, whole[len(ctx) :]

    def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        out = []
        scorer = getattr(self.model, "token_logprobs_greedy", None)
        for request in requests:
            context, continuation = request.args
            ctx, cont = self._split_request(context, continuation)
            ids = [self.model.eod_id, *ctx, *cont]
            if callable(scorer):
                logprobs, greedy = scorer(ids)
                is_greedy = bool(greedy[-len(cont) :].all()) if cont else True
            else:
                logprobs, is_greedy = self.model.token_logprobs(ids), False
            result = (float(logprobs[-len(cont) :].sum()) if cont else 0.0, is_greedy)
            self.cache_hook.add_partial("loglikelihood", request.args, result)
            out.append(result)
        return out

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        out = []
        for request in requests:
            (text,) = request.args
            # The model slides its own window over long texts; each token is predicted once.
            total = float(self.model.token_logprobs([self.model.eod_id, *self.model.encode(text)]).sum())
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, total)
            out.append(total)
        return out

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        model = self.model
        if not isinstance(model, TextGenerator):
            raise TypeError(f"{model.name} cannot generate text")
        # Requests with the same stop strings and token budget are generated as one batch.
        groups: dict[tuple[tuple[str, ...], int], list[int]] = {}
        for i, request in enumerate(requests):
            gen_kwargs = dict(request.args[1] or {})
            until = gen_kwargs.get("until") or []
            stop = (until,) if isinstance(until, str) else tuple(until)
            groups.setdefault((stop, int(gen_kwargs.get("max_gen_toks", self.max_gen_toks))), []).append(i)
        out = [""] * len(requests)
        for (stop, max_new), members in groups.items():
            contexts = [requests[i].args[0] for i in members]
            texts = model.generate_batch(contexts, max_new_tokens=max_new, stop=list(stop))
            for i, text in zip(members, texts, strict=True):
                self.cache_hook.add_partial("generate_until", requests[i].args, text)
                out[i] = text
        return out
