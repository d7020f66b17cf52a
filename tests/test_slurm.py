"""The pretraining step as a Slurm job on a real single-node cluster (munged, slurmctld, slurmd started
here): from the CLI path and through Dagster Pipes (metrics and the materialisation stream back over
files), a failed job as one clear error, and an interrupted launcher scancels its job."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
from dagster import DagsterInstance, PipesSubprocessClient, materialize

from assets.catalog import in_groups
from assets.resources import DvcVersioning, FoundrySettings, MLflowTracking
from mai_models.config import load_params
from mai_models.errors import MaiUserError
from mai_models.executor.slurm import job_script, job_state
from mai_models.graph import project
from mai_models.lm.launch import ENTRY_MODULE, slurm_job, torchrun_prefix
from mai_models.lm.train_config import LaunchConfig
from mai_models.services.slurm import SlurmCluster
from mai_models.settings import load_settings

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SLURM = [
    "lm.preset=tiny",
    "lm.steps=3",
    "lm.micro_batch_size=2",
    "lm.global_batch_size=4",
    "lm.eval_interval=3",
    "lm.eval_iters=1",
    "lm.checkpoint_interval=3",
    "lm.warmup_steps=1",
    "lm.launch.threads_per_rank=1",
    "lm.launch.engine=slurm",
]
# Long enough that only a cancel ends it within the test.
LONG = [*SLURM, "lm.steps=100000", "lm.checkpoint_interval=100000", "lm.eval_interval=100000"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    with SlurmCluster(tmp_path_factory.mktemp("slurm")) as running:
        yield running


@pytest.fixture
def slurm_env(cluster: SlurmCluster, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """sbatch, squeue and the trainer's ranks reach the test cluster through SLURM_CONF. A job a
    failed test leaves behind is cancelled, so that it cannot hold the one node from the next test."""
    for key, value in cluster.env.items():
        monkeypatch.setenv(key, value)
    env = cluster.client_env()
    # A shell that starts pytest in the background leaves SIGINT and SIGTERM ignored, and children
    # inherit that: the launcher then rightly leaves SIGTERM alone. The tests interrupt as a terminal
    # would, so they run with the default dispositions.
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    yield env
    for sig, handler in saved.items():
        signal.signal(sig, handler)
    left = _queue(env)[::2]
    if left:
        subprocess.run(["scancel", *left], env=env, check=True)


def _queue(env: dict[str, str]) -> list[str]:
    done = subprocess.run(
        ["squeue", "-h", "-o", "%i %T"], env=env, capture_output=True, text=True, check=True
    )
    return done.stdout.split()


class Interrupter:
    """On a thread, while the test's main thread waits in the launcher: once the job's rank has
    started training, note the job and its processes, then call ``interrupt``."""

    def __init__(self, env: dict[str, str], root: Path, interrupt, timeout: float = 300.0) -> None:
        self.env, self.root, self.interrupt, self.timeout = env, root, interrupt, timeout
        self.job_id: int | None = None
        self.processes: list[Path] = []
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()

    def _watch(self) -> None:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            try:
                queue = _queue(self.env)
            except subprocess.CalledProcessError:
                queue = []  # the controller did not answer this poll (busy under load): ask again
            if len(queue) == 2 and queue[1] == "RUNNING":
                logs = list(self.root.glob(f".mai/work/moe_pretrain/*/slurm/*-{queue[0]}.log"))
                if logs and '"event": "start"' in logs[0].read_text(errors="replace"):
                    self.job_id, self.processes = int(queue[0]), _processes_under(self.root)
                    self.interrupt()
                    return
            time.sleep(0.2)

    def assert_cancelled(self) -> None:
        self.thread.join(timeout=5)
        assert self.job_id is not None, "the job never started training"
        assert self.processes, "no process of the job was seen while it trained"
        assert _queue(self.env) == [], "the job is still queued after the interrupt"
        state = job_state(self.job_id, self.env)
        assert state is not None and state.state == "CANCELLED", state
        assert _processes_under(self.root) == [], "a process of the cancelled job is still running"


def _processes_under(root: Path) -> list[Path]:
    """Processes whose command line names this workspace (srun, torchrun and the rank read its spec)."""
    return [p for p in Path("/proc").glob("[0-9]*/cmdline") if str(root).encode() in _read(p)]


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:  # the process ended meanwhile
        return b""


def _assert_checkpoint(root: Path) -> None:
    out = root / "data" / "moe_pretrain"
    assert (out / "checkpoint" / ".metadata").is_file()
    assert json.loads((out / "model.json").read_text())["steps"] == 3


def test_cli_path_trains_as_a_slurm_job(
    lm_workspace: Path, slurm_env: dict[str, str], capfd: pytest.CaptureFixture
) -> None:
    settings = load_settings()
    graph = project(settings, load_params(settings.params_file, SLURM))
    done = graph.materialize("moe_pretrain", track=True)

    job_id = done.metadata()["slurm_job_id"]
    state = job_state(job_id, slurm_env)
    assert state is not None and (state.state, state.exit_code) == ("COMPLETED", "0:0")
    out = capfd.readouterr().out
    work = graph.context("moe_pretrain").work_dir
    log = work / "slurm" / f"mai-moe_pretrain-{job_id}.log"
    assert f"submitted Slurm job {job_id} (log: {log})" in out
    # The job's log was followed onto this process's stdout: the rank's metric lines are there.
    rows = [json.loads(line) for line in out.splitlines() if line.startswith('{"step"')]
    assert [r["step"] for r in rows if "train/loss" in r] == [1, 2, 3], out[-3000:]
    script = (work / "slurm" / "mai-moe_pretrain.sbatch").read_text()
    assert "srun --kill-on-bad-exit=1 " in script and "--rdzv_backend=c10d -m mai_models.lm.entry" in script
    _assert_checkpoint(lm_workspace)
    client = mlflow.MlflowClient(settings.mlflow_tracking_uri)
    losses = client.get_metric_history(done.mlflow_run_id, "train/loss")
    assert [m.step for m in losses] == [1, 2, 3]


def test_dagster_streams_metrics_and_materialisation_from_the_job(
    lm_workspace: Path, slurm_env: dict[str, str]
) -> None:
    instance = DagsterInstance.ephemeral()
    result = _materialize(instance, SLURM)
    assert result.success
    [event] = [e for e in result.all_events if e.is_step_materialization]
    meta = event.step_materialization_data.materialization.metadata
    job_id = meta["slurm_job_id"].value
    assert job_state(job_id, slurm_env).state == "COMPLETED"
    # Reported by rank 0 through the file channel, not read back from the work directory.
    assert meta["final_train_loss"].value < 7.5 and meta["parameters_total"].value == 254_784
    assert meta["tokens_seen"].value == 3 * 4 * 64
    logs = [e.message for e in instance.all_logs(result.run_id) if e.message]
    assert any(f"submitted Slurm job {job_id}" in m for m in logs)
    streamed = [json.loads(m) for m in logs if m.startswith('{"step"')]
    assert [m["step"] for m in streamed if "train/loss" in m] == [1, 2, 3], (
        "rank 0 did not stream metrics through Pipes"
    )
    _assert_checkpoint(lm_workspace)
    assert not list((lm_workspace / ".mai" / "work" / "moe_pretrain").glob("*/slurm/pipes-*"))


def test_a_failed_job_is_one_error_with_its_id_and_log_tail(
    lm_workspace: Path, slurm_env: dict[str, str]
) -> None:
    settings = load_settings()
    graph = project(settings, load_params(settings.params_file, SLURM), options={"fault_nan_at_step": 1})
    with pytest.raises(MaiUserError) as failed:
        graph.materialize("moe_pretrain", track=False)
    message = str(failed.value)
    first, *tail = message.splitlines()
    # One line says which job, how it ended and why (the rank's own error, not torchrun's traceback).
    assert re.fullmatch(
        r"Slurm job \d+ ended FAILED \(exit code 1:0\): error: loss became nan at step 2; "
        r"last good checkpoint kept: none \(no checkpoint yet\); last lines of .*\.log:",
        first,
    ), message
    job_id = int(first.split()[2])
    assert job_state(job_id, slurm_env).state == "FAILED"
    log = lm_workspace / ".mai" / "work" / "moe_pretrain"
    assert first.endswith(f"/slurm/mai-moe_pretrain-{job_id}.log:") and str(log) in first
    # Then the log's tail: torchrun's summary of the failed rank and srun's verdict.
    assert len(tail) == 20 and "srun: error:" in "\n".join(tail) and "exitcode  : 2" in "\n".join(tail)
    assert not (lm_workspace / "data" / "moe_pretrain" / "checkpoint").exists()


def test_terminating_the_cli_cancels_its_job(lm_workspace: Path, slurm_env: dict[str, str]) -> None:
    command = [str(REPO / ".venv" / "bin" / "mai"), "lm", "train", "--no-track"]
    command += [arg for override in LONG for arg in ("-S", override)]
    cli = subprocess.Popen(command, env={**os.environ, **slurm_env}, stdout=subprocess.PIPE, text=True)
    watch = Interrupter(slurm_env, lm_workspace, lambda: cli.send_signal(signal.SIGTERM))
    try:
        code = cli.wait(timeout=360)
    finally:
        cli.kill()
    watch.assert_cancelled()
    assert code == 130  # interrupted, after scancel returned
    assert f"submitted Slurm job {watch.job_id}" in cli.stdout.read()


def test_cancelling_the_dagster_run_cancels_its_job(lm_workspace: Path, slurm_env: dict[str, str]) -> None:
    # An interrupt of the step process is how Dagster cancels a run's step (SIGTERM maps to it too).
    watch = Interrupter(slurm_env, lm_workspace, lambda: os.kill(os.getpid(), signal.SIGINT))
    result = _materialize(DagsterInstance.ephemeral(), LONG, raise_on_error=False)
    watch.assert_cancelled()
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert failure.step_failure_data.error.cls_name == "DagsterExecutionInterruptedError", failure


def test_a_job_sbatch_refuses_is_one_clear_line(lm_workspace: Path, slurm_env: dict[str, str]) -> None:
    settings = load_settings()
    params = load_params(settings.params_file, [*SLURM, "lm.launch.slurm.partition=nowhere"])
    with pytest.raises(MaiUserError) as refused:
        project(settings, params).materialize("moe_pretrain", track=False)
    assert re.fullmatch(
        r"sbatch refused \S+/slurm/mai-moe_pretrain\.sbatch: sbatch: error: Batch job submission "
        r"failed: Invalid partition name specified",
        str(refused.value),
    ), refused.value
    assert _queue(slurm_env) == []


@pytest.mark.parametrize(
    ("overrides", "error"),
    [
        (
            ["lm.launch.engine=slurm", "lm.launch.nnodes=2", "lm.launch.rdzv_endpoint=n0:29500"],
            "under Slurm the rendezvous is the job's first node: leave rdzv_endpoint and node_rank unset",
        ),
        (["lm.launch.nnodes=2", "lm.launch.node_rank=2"], "node_rank 2 is not below nnodes 2"),
        (["lm.launch.engine=k8s"], "Input should be 'local' or 'slurm'"),
    ],
)
def test_contradicting_launch_settings_are_refused(overrides: list[str], error: str) -> None:
    with pytest.raises(MaiUserError, match=re.escape(error)):
        load_params(REPO / "params.yaml", overrides)


def test_the_infra_script_is_the_one_the_engine_writes() -> None:
    """infra/slurm/pretrain.sbatch, for submitting by hand, says what the engine submits for a
    4-node run; only its comments, the spec variable and the log directory differ."""
    launch = LaunchConfig(
        engine="slurm",
        nnodes=4,
        nproc_per_node=8,
        slurm={"sbatch_args": ("--gpus-per-node=8", "--cpus-per-task=96", "--exclusive")},
    )
    job = slurm_job(launch, "moe_pretrain", Path("/work"))
    command = [*torchrun_prefix(launch), "-m", ENTRY_MODULE, "SPEC"]
    generated = job_script(job, command, Path("/project")).replace(sys.executable, "python")

    def significant(script: str) -> list[str]:
        return [
            line.replace(" --output=/work/slurm/", " --output=")
            for line in script.replace('"$SPEC"', "SPEC").splitlines()
            if not line.startswith(("# ", "cd ", "SPEC="))
        ]

    assert significant(generated) == significant((REPO / "infra" / "slurm" / "pretrain.sbatch").read_text())


def _materialize(instance: DagsterInstance, overrides: list[str], raise_on_error: bool = True):
    assets, _ = in_groups("lm")
    return materialize(
        [a for a in assets if a.key.to_user_string() == "moe_pretrain"],
        instance=instance,
        resources={
            "foundry": FoundrySettings(),
            "mlflow": MLflowTracking(enabled=False),
            "dvc": DvcVersioning(enabled=False),
            "pipes_subprocess_client": PipesSubprocessClient(),
        },
        run_config={"ops": {"moe_pretrain": {"config": {"overrides": overrides}}}},
        raise_on_error=raise_on_error,
    )
