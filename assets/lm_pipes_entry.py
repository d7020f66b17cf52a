"""torchrun target under Dagster Pipes: every rank trains; rank 0 alone talks to Dagster, streaming
metrics as Pipes log lines and reporting the final materialisation."""

import json
import os
import sys
from pathlib import Path
from typing import Any

from mai_models.errors import MaiUserError
from mai_models.lm.run_spec import RunSpec
from mai_models.lm.trainer import train


class PipesSink:
    def __init__(self, pipes: Any) -> None:
        self.pipes = pipes

    def log(self, step: int, metrics: dict[str, float]) -> None:
        brief = {k: round(v, 5) for k, v in metrics.items() if not k.startswith(("router/", "moe/"))}
        self.pipes.log.info(json.dumps({"step": step, **brief}))

    def event(self, kind: str, payload: dict[str, Any]) -> None:
        if kind == "start":
            self.pipes.log.info(f"training started: {json.dumps(payload, default=str)}")


def main(spec_path: str) -> int:
    spec = RunSpec.model_validate_json(Path(spec_path).read_text())
    if int(os.environ.get("RANK", "0")) != 0:
        train(spec)
        return 0
    from dagster_pipes import open_dagster_pipes

    with open_dagster_pipes() as pipes:
        try:
            summary = train(spec, extra_sinks=[PipesSink(pipes)])
        except MaiUserError as exc:
            pipes.log.error(str(exc))
            print(f"error: {exc}", file=sys.stderr, flush=True)
            return 2
        pipes.report_asset_materialization(
            metadata={
                "final_train_loss": summary.final_train_loss,
                "final_valid_loss": summary.final_valid_loss,
                "final_valid_bits_per_byte": summary.final_valid_bpb,
                "tokens_seen": summary.tokens_seen,
                "parameters_total": summary.parameters.get("total"),
                "parameters_active": summary.parameters.get("active"),
                "resumed_from_step": summary.resumed_from,
            }
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
