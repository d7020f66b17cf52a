"""Declarative automation from each step's declaration: what reruns by itself, and when.

- "eager" steps (data, releases, evaluation, arena, gate, submission) run as soon as an upstream
  output's data version changed: a no-op rematerialisation upstream (same version) triggers nothing.
- "scheduled" steps (trainings) run at the next tick of ``automation.training_cron`` after their
  upstream changed (or when their output is missing), so a trickle of landing drops trains once.
- Every condition waits for the blocking checks of its upstream assets to pass.
"""

from dagster import AutomationCondition

from mai_models.executor.step import Step


def _upstream_changed() -> AutomationCondition:
    return AutomationCondition.any_deps_match(
        AutomationCondition.data_version_changed() | AutomationCondition.will_be_requested()
    ).with_label("any_deps_data_version_changed")


def _ready() -> AutomationCondition:
    return (
        ~AutomationCondition.any_deps_missing()
        & ~AutomationCondition.any_deps_in_progress()
        & ~AutomationCondition.in_progress()
        & AutomationCondition.all_deps_blocking_checks_passed()
    )


def eager() -> AutomationCondition:
    condition = AutomationCondition.eager().replace("any_deps_updated", _upstream_changed())
    return (condition & AutomationCondition.all_deps_blocking_checks_passed()).with_label(
        "eager (upstream data version changed)"
    )


def scheduled(cron: str) -> AutomationCondition:
    handled = AutomationCondition.newly_requested() | AutomationCondition.newly_updated()
    pending = (_upstream_changed().since(handled) | AutomationCondition.missing()).with_label(
        "new upstream data since the last training"
    )
    return (AutomationCondition.cron_tick_passed(cron) & pending & _ready()).with_label(f"scheduled ({cron})")


def condition_for(step: Step, training_cron: str) -> AutomationCondition:
    return scheduled(training_cron) if step.automation == "scheduled" else eager()
