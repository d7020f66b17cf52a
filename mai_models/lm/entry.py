"""``torchrun ... -m mai_models.lm.entry SPEC.json``: one training rank, outside any orchestrator."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from mai_models.errors import MaiUserError


def json_file_main(argv: list[str] | None, usage: str, run: Callable[[str], object]) -> int:
    """A torchrun entry point's ``main``: one JSON file argument, handed to ``run`` as its text; a
    MaiUserError becomes one ``error:`` line and exit code 2."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(f"usage: {usage}", file=sys.stderr)
        return 2
    try:
        run(Path(args[0]).read_text())
    except MaiUserError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    from mai_models.lm.run_spec import RunSpec
    from mai_models.lm.trainer import train

    return json_file_main(
        argv,
        "python -m mai_models.lm.entry SPEC.json",
        lambda text: train(RunSpec.model_validate_json(text)),
    )


if __name__ == "__main__":
    sys.exit(main())
