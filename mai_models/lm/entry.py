"""``torchrun ... -m mai_models.lm.entry SPEC.json``: one training rank, outside any orchestrator."""

from __future__ import annotations

import sys
from pathlib import Path

from mai_models.errors import MaiUserError


def main(argv: list[str] | None = None) -> int:
    from mai_models.lm.run_spec import RunSpec
    from mai_models.lm.trainer import train

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m mai_models.lm.entry SPEC.json", file=sys.stderr)
        return 2
    try:
        train(RunSpec.model_validate_json(Path(args[0]).read_text()))
    except MaiUserError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
