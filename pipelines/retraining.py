"""Drive the automation the way the daemon does, tick after tick, without waiting for wall-clock ticks:
the landing sensor, then each evaluation of the automation conditions, materialising what they
request, until nothing more is requested. When the data plane is quiet the clock jumps to the next
tick of the training cron, so a drop goes all the way to a new candidate and a gate decision.

Tests use it to show that a landing drop leads by itself to a new candidate; `mai bench retrain`
times it (`python -m pipelines.retraining`, one JSON line)."""

from __future__ import annotations

import datetime as dt
import json
import sys
import time
from dataclasses import dataclass, field

from dagster import (
    AssetSelection,
    DagsterInstance,
    Definitions,
    build_sensor_context,
    evaluate_automation_conditions,
    materialize,
)

# Dagster's own cron arithmetic (no public API): the same ticks its schedules and conditions use.
from dagster._utils.schedules import cron_string_iterator

from assets.catalog import catalog
from assets.resources import FoundrySettings, default_resources
from pipelines.sensors import landing_drop_sensor


@dataclass
class Drive:
    """What one drive did: the asset keys of each run, in order, and how long each took."""

    runs: list[list[str]] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    ticks: int = 0

    def ran(self, name: str) -> bool:
        return any(name in run for run in self.runs)


def current_definitions() -> Definitions:
    """The assets, checks and resources of the current project (its own params, not the import-time
    project's), for driving it in this process."""
    assets, checks = catalog(FoundrySettings().params())
    return Definitions(assets=assets, asset_checks=checks, resources=default_resources())


def _requested(result) -> list[str]:
    return sorted(r.key.to_user_string() for r in result.results if r.true_subset.size)


def _next_tick(cron: str, after: dt.datetime) -> dt.datetime:
    return next(cron_string_iterator(after.timestamp(), cron, "UTC")) + dt.timedelta(minutes=1)


def _materialize(defs: Definitions, instance: DagsterInstance, keys: list[str], drive: Drive) -> None:
    started = time.perf_counter()
    assets = list(defs.assets or [])
    checks = list(defs.asset_checks or [])
    result = materialize(
        [*assets, *checks],
        selection=AssetSelection.assets(*keys),
        instance=instance,
        resources=defs.resources,
        raise_on_error=False,
    )
    drive.runs.append(keys)
    drive.seconds.append(round(time.perf_counter() - started, 3))
    if not result.success:
        raise RuntimeError(f"the run of {keys} failed: see the Dagster instance, run {result.run_id}")


def drive(
    defs: Definitions,
    instance: DagsterInstance,
    *,
    start: dt.datetime,
    training_cron: str,
    cursor=None,
    landing: bool = True,
    max_runs: int = 20,
) -> tuple[Drive, object, dt.datetime]:
    """Returns the drive, the automation cursor and the clock, so a later drive can continue."""
    done = Drive()
    clock = start
    if cursor is None:
        # A first evaluation only records what the conditions see (data versions): the daemon's state.
        cursor = evaluate_automation_conditions(defs, instance, evaluation_time=clock).cursor
    if landing:
        foundry = defs.resources["foundry"]
        tick = landing_drop_sensor.evaluate_tick(build_sensor_context(resources={"foundry": foundry}))
        for request in tick.run_requests:
            _materialize(defs, instance, [k.to_user_string() for k in request.asset_selection], done)
    jumped = False
    while len(done.runs) < max_runs:
        clock += dt.timedelta(minutes=1)
        result = evaluate_automation_conditions(defs, instance, cursor=cursor, evaluation_time=clock)
        cursor, done.ticks = result.cursor, done.ticks + 1
        keys = _requested(result)
        if keys:
            _materialize(defs, instance, keys, done)
            jumped = False
        elif not jumped:
            clock, jumped = _next_tick(training_cron, clock), True  # quiet: wait for the training tick
        else:
            break
    return done, cursor, clock


def main() -> int:
    """One drive on the current project, from a landing drop; prints one JSON line."""
    defs = current_definitions()
    instance = DagsterInstance.get()
    started = time.perf_counter()
    cron = FoundrySettings().params().automation.training_cron
    done, _, _ = drive(defs, instance, start=dt.datetime.now(dt.UTC), training_cron=cron)
    seconds = round(time.perf_counter() - started, 3)
    print(
        json.dumps({"runs": done.runs, "run_seconds": done.seconds, "ticks": done.ticks, "seconds": seconds})
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
