"""Steps of one run wait for their pool in the multiprocess executor (``RUN_POOL_LIMITS``, the run-scoped
mirror of the instance pools), so a slot that frees goes to the next step at once; a step blocked on the
instance pool itself only re-claims on Dagster's backoff, which grows to 15 s."""

from __future__ import annotations

import time
from pathlib import Path

from dagster import (
    AssetKey,
    DagsterEventType,
    DagsterInstance,
    Definitions,
    asset,
    define_asset_job,
    execute_job,
)
from dagster._core.definitions.reconstruct import ReconstructableJob

from assets.step_asset import POOL_TAG, RUN_POOL_LIMITS, TRAINING_POOL

BLOCKED = f"blocked by limit for pool {TRAINING_POOL}"


def _heavy(name: str):
    @asset(name=name, pool=TRAINING_POOL, op_tags={POOL_TAG: TRAINING_POOL})
    def _train() -> None:
        time.sleep(1.0)

    return _train


def two_heavy_steps():
    """Two independent steps in the training pool, as the demo's trainings are (module level, so
    that the multiprocess executor's step processes can rebuild it)."""
    defs = Definitions(assets=[_heavy("first"), _heavy("second")], jobs=[define_asset_job("two")])
    return defs.resolve_job_def("two")


def _run(tmp_path: Path, limits: list | None) -> tuple[list[str], list]:
    multiprocess = {"max_concurrent": 4, **({"tag_concurrency_limits": limits} if limits else {})}
    overrides = {"concurrency": {"pools": {"default_limit": 1}}}
    with DagsterInstance.local_temp(str(tmp_path), overrides=overrides) as instance:
        result = execute_job(
            # By file: the step processes need not find this test module on their sys.path.
            ReconstructableJob.for_file(__file__, two_heavy_steps.__name__),
            instance=instance,
            run_config={"execution": {"config": {"multiprocess": multiprocess}}},
        )
        assert result.success
        events = instance.all_logs(result.run_id)
    messages = [e.message or "" for e in events if e.dagster_event_type == DagsterEventType.ENGINE_EVENT]
    return messages, events


def _spans(events: list) -> list[tuple[float, float]]:
    starts = {e.step_key: e.timestamp for e in events if e.dagster_event_type == DagsterEventType.STEP_START}
    ends = {e.step_key: e.timestamp for e in events if e.dagster_event_type == DagsterEventType.STEP_SUCCESS}
    return sorted((starts[k], ends[k]) for k in starts)


def test_the_run_scoped_limit_hands_the_pool_over_without_a_blocked_claim(tmp_path: Path) -> None:
    messages, events = _run(tmp_path, RUN_POOL_LIMITS)
    assert not [m for m in messages if BLOCKED in m]
    (_, first_end), (second_start, _) = _spans(events)
    assert second_start >= first_end  # still one heavy step at a time
    materialized = [e for e in events if e.dagster_event_type == DagsterEventType.ASSET_MATERIALIZATION]
    assert {e.dagster_event.asset_key for e in materialized} == {AssetKey("first"), AssetKey("second")}


def test_without_it_the_second_step_waits_in_the_instance_pool_backoff(tmp_path: Path) -> None:
    messages, events = _run(tmp_path, None)
    assert [m for m in messages if BLOCKED in m]
    (_, first_end), (second_start, _) = _spans(events)
    assert second_start >= first_end


def test_every_job_and_the_demo_run_wait_on_the_pools_in_the_executor() -> None:
    from pipelines.definitions import defs
    from pipelines.demo import RUN_CONFIG
    from pipelines.jobs import JOBS

    assert RUN_CONFIG["execution"]["config"]["multiprocess"]["tag_concurrency_limits"] == RUN_POOL_LIMITS
    for job in JOBS:
        run_config = defs.resolve_job_def(job.name).run_config or {}
        assert run_config["execution"]["config"]["multiprocess"]["tag_concurrency_limits"] == RUN_POOL_LIMITS
    # The executor counts a step against the pool its op tag names: the tag must be the asset's pool.
    # Light steps take none, so that they overlap.
    steps = [a for a in defs.assets if hasattr(a, "op")]
    assert steps and all(a.op.tags.get(POOL_TAG) == a.op.pool for a in steps)
    assert {a.op.pool for a in steps} == {TRAINING_POOL, None}
