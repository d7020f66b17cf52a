"""What a registered model version's page says. Its description opens with the model card's summary,
then one section per stage that knows something about the version, each with links into the UI: the
training run (loss chart, expert-load heatmap, mel plots, playable samples) and a comparison with the
version before it, the data runs it read (with their logged datasets), its evaluation and the gate.

Each writer replaces only its own section (``### Training``, ``### Evaluation``, ...), so re-running a
stage rewrites its links instead of appending them twice."""

from __future__ import annotations

import re
from typing import Any

from mai_models.settings import Settings
from mai_models.tracking.mlflow_links import compare_route, metric_route, run_route
from mai_models.tracking.state import read_state

MEDIA = (".png", ".wav")
LOSSES = ("train/loss", "valid/loss")  # the trainers' curves, charted together for two versions
MAX_MEDIA = 8
_SECTION = re.compile(r"^### (.+)$", re.M)
# The model card's headline numbers, in the order the summary names them.
_HEADLINE = ("total", "active", "acoustic", "vocoder")


def summary(model: str, version: str, params: dict[str, Any], metrics: dict[str, float], tags: dict) -> str:
    """One paragraph: preset, sizes, final metrics and where the weights started."""
    sizes = [f"{k} {_count(params[k])}" for k in _HEADLINE if k in params]
    parts = [f"**{model} v{version}**", f"preset `{params.get('preset', '?')}`"]
    if sizes:
        parts.append("parameters: " + ", ".join(sizes))
    if metrics:
        parts.append(", ".join(f"{k} {v:.4g}" for k, v in sorted(metrics.items())))
    parent = tags.get("mai.parent_version")
    parts.append(f"warm start from v{parent}" if parent and parent != "none" else "trained from scratch")
    return "; ".join(parts) + "."


def _count(value: Any) -> str:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if number >= size:
            return f"{number / size:.1f}{unit}"
    return f"{number:.0f}"


def describe_candidate(
    settings: Settings,
    client: Any,
    model: str,
    version: str,
    run_id: str,
    tags: dict[str, str],
    params: dict[str, Any],
    metrics: dict[str, float],
) -> None:
    """The description of a newly registered version: summary, training and data sections."""
    run = client.get_run(run_id)
    experiment = run.info.experiment_id
    training = [f"- Training run: [{run.info.run_name}]({run_route(experiment, run_id)})"]
    previous = _previous_run(client, model, version)
    if previous is not None:
        number, prev_run = previous
        experiments, runs = [experiment, prev_run.info.experiment_id], [prev_run.info.run_id, run_id]
        training.append(
            f"- [Compare with v{number}]({compare_route(experiments, runs)}): parameters and metrics"
        )
        losses = [k for k in LOSSES if k in run.data.metrics and k in prev_run.data.metrics]
        if losses:
            both = metric_route(experiments, runs, losses)
            training.append(f"- [Loss curves of v{number} and v{version}]({both})")
    training += media_links(client, experiment, run_id)
    data = []
    for key, data_version in sorted(tags.items()):
        step = key.removeprefix("mai.upstream.")
        if not key.startswith("mai.upstream.") or "." in step:
            continue
        state = read_state(settings, step)
        if state.get("version") != data_version or not state.get("mlflow_run_id"):
            data.append(f"- {step} `{data_version}`")
            continue
        up = client.get_run(state["mlflow_run_id"])
        data.append(f"- {step}: [{up.info.run_name}]({run_route(up.info.experiment_id, up.info.run_id)})")
        data += [f"  {link}" for link in media_links(client, up.info.experiment_id, up.info.run_id)]
    head = summary(model, version, params, metrics, tags)
    text = _join(head, {"Training": "\n".join(training), "Data (runs, with their datasets)": "\n".join(data)})
    client.update_model_version(model, version, description=text)


def set_section(client: Any, model: str, version: str, heading: str, lines: list[str]) -> None:
    """Replace (or add) one section of a version's description, keeping the others."""
    head, sections = _split(client.get_model_version(model, version).description or "")
    sections[heading] = "\n".join(lines)
    client.update_model_version(model, version, description=_join(head, sections))


def media_links(client: Any, experiment: str, run_id: str) -> list[str]:
    """Links to a run's plots and audio (the newest ``step_*`` folder of training samples only)."""
    found: list[str] = []
    _walk(client, run_id, None, found)
    return [f"- [{path}]({run_route(experiment, run_id, path)})" for path in found[:MAX_MEDIA]]


def _walk(client: Any, run_id: str, path: str | None, found: list[str]) -> None:
    entries = client.list_artifacts(run_id, path)
    folders = [e for e in entries if e.is_dir]
    steps = sorted(e.path for e in folders if e.path.rsplit("/", 1)[-1].startswith("step_"))
    for entry in entries:
        if not entry.is_dir and entry.path.endswith(MEDIA):
            found.append(entry.path)
    for entry in folders:
        if steps and entry.path.rsplit("/", 1)[-1].startswith("step_") and entry.path != steps[-1]:
            continue
        if entry.path.count("/") < 3 and len(found) < MAX_MEDIA:
            _walk(client, run_id, entry.path, found)


def run_links(client: Any, run_id: str) -> list[str]:
    """A run and the files it logged at its top level, plus its media."""
    run = client.get_run(run_id)
    experiment = run.info.experiment_id
    lines = [f"- Run: [{run.info.run_name}]({run_route(experiment, run_id)})"]
    for entry in client.list_artifacts(run_id):
        if not entry.is_dir and not entry.path.startswith("_") and not entry.path.endswith(MEDIA):
            lines.append(f"- [{entry.path}]({run_route(experiment, run_id, entry.path)})")
    return lines + media_links(client, experiment, run_id)


def _previous_run(client: Any, model: str, version: str) -> tuple[str, Any] | None:
    older = [v for v in client.search_model_versions(f"name = '{model}'") if int(v.version) < int(version)]
    if not older:
        return None
    latest = max(older, key=lambda v: int(v.version))
    return str(latest.version), client.get_run(latest.run_id)


def _split(text: str) -> tuple[str, dict[str, str]]:
    parts = _SECTION.split(text)
    head, rest = parts[0].strip(), parts[1:]
    return head, {rest[i].strip(): rest[i + 1].strip() for i in range(0, len(rest) - 1, 2)}


def _join(head: str, sections: dict[str, str]) -> str:
    return "\n\n".join([head, *(f"### {name}\n{body}" for name, body in sections.items() if body)])
