"""Runs a step's program (pretraining under torchrun) through Dagster Pipes: rank 0 streams its metrics
as Pipes log lines and reports the final materialisation, which joins the asset's metadata. A local
program is a Pipes subprocess; a Slurm one is a batch job that talks to Dagster through files in its
log directory (every node sees it), and a cancelled run cancels the job."""

import shutil
from typing import Any

from dagster import (
    AssetExecutionContext,
    PipesClientCompletedInvocation,
    PipesFileContextInjector,
    PipesFileMessageReader,
    PipesSubprocessClient,
    open_pipes_session,
)

from mai_models.executor.launch import Program
from mai_models.executor.slurm import SlurmJob, run_job

# The torchrun target under Pipes: the library's entry point, wrapped to talk to Dagster.
PIPES_ENTRY = "assets.lm_pipes_entry"


class PipesLauncher:
    def __init__(self, context: AssetExecutionContext, client: PipesSubprocessClient) -> None:
        self.context = context
        self.client = client

    def launch(self, program: Program) -> dict[str, Any]:
        if program.slurm is not None:
            return self._launch_on_slurm(program, program.slurm)
        invocation = self.client.run(
            command=program.command(PIPES_ENTRY),
            context=self.context,
            env=program.env,
            cwd=str(program.cwd),
        )
        return dict(invocation.get_materialize_result().metadata)

    def _launch_on_slurm(self, program: Program, job: SlurmJob) -> dict[str, Any]:
        # One channel per Dagster run: a retry of the step never reads an earlier attempt's messages.
        channel = job.log_dir / f"pipes-{self.context.run.run_id}"
        channel.mkdir(parents=True, exist_ok=True)
        try:
            with open_pipes_session(
                context=self.context,
                context_injector=PipesFileContextInjector(str(channel / "context.json")),
                message_reader=PipesFileMessageReader(str(channel / "messages.jsonl")),
            ) as session:
                # A cancelled run raises DagsterExecutionInterruptedError while this waits, and
                # run_job scancels the job before it propagates.
                job_id = run_job(
                    job,
                    program.command(PIPES_ENTRY),
                    {**program.env, **session.get_bootstrap_env_vars()},
                    program.cwd,
                    on_submit=lambda job_id, log: self.context.log.info(
                        f"submitted Slurm job {job_id}; its log: {log}"
                    ),
                )
        finally:
            shutil.rmtree(channel, ignore_errors=True)
        metadata = PipesClientCompletedInvocation(session).get_materialize_result().metadata
        return {**metadata, "slurm_job_id": job_id}
