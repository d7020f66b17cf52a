"""The language model's warm start: the parent's checkpoint handed to the trainer, and the one start
that is refused, a parent whose tokenizer is not the one the new shards were made with (its token
ids would mean other strings)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mai_models.errors import MaiUserError
from mai_models.lm.run_spec import InitSpec
from mai_models.tokenizer.bpe import TOKENIZER_FILE
from mai_models.tracking.champion_output import output_dir

if TYPE_CHECKING:
    from mai_models.executor.step import StepContext
    from mai_models.tracking.warm_start import Start


def init_spec(ctx: StepContext, start: Start) -> InitSpec:
    """The trainer's start for ``start``; the parent's output comes from the work tree or DVC."""
    if start.parent is None:
        return InitSpec(init_from=start.init_from, reason=start.reason)
    # ctx.output is still the stored output while the step builds: the champion's when it is newest.
    parent_dir = output_dir(ctx.settings, start.parent, ctx.output)
    theirs = (parent_dir / TOKENIZER_FILE).read_bytes()
    ours = (ctx.input("bpe_tokenizer") / TOKENIZER_FILE).read_bytes()
    if theirs != ours:
        raise MaiUserError(
            f"lm.init_from: champion refused: {start.parent_label} was trained with another tokenizer "
            "than this bpe_tokenizer output; set tokenizer.freeze_to: champion to keep the champion's"
        )
    return InitSpec(
        init_from=start.init_from,
        parent=start.parent_label,
        checkpoint=parent_dir / "checkpoint",
        reason=start.reason,
    )
