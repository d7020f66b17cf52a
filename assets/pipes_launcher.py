"""Runs a step's program (pretraining under torchrun) through Dagster Pipes: rank 0 streams its metrics
as Pipes log lines and reports the final materialisation, which joins the asset's metadata."""

from typing import Any

from dagster import AssetExecutionContext, PipesSubprocessClient

from mai_models.executor.launch import Program

# The torchrun target under Pipes: the library's entry point, wrapped to talk to Dagster.
PIPES_ENTRY = "assets.lm_pipes_entry"


class PipesLauncher:
    def __init__(self, context: AssetExecutionContext, client: PipesSubprocessClient) -> None:
        self.context = context
        self.client = client

    def launch(self, program: Program) -> dict[str, Any]:
        invocation = self.client.run(
            command=program.command(PIPES_ENTRY),
            context=self.context,
            env=program.env,
            cwd=str(program.cwd),
        )
        return dict(invocation.get_materialize_result().metadata)
