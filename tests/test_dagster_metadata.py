"""What a platform engineer finds in the Dagster UI: owners and tags on every asset, a launchpad config
that lists each step's own parameters with their descriptions, asset pages with the step's plots
inline and a link to its MLflow run."""

from __future__ import annotations

import base64
import re
from pathlib import Path

from conftest import materializations
from dagster import DagsterInstance, materialize

from assets.asset_page import plots, plots_markdown
from assets.catalog import in_groups
from assets.resources import FoundrySettings, default_resources
from assets.step_asset import graph_assets
from mai_models.config import load_params
from mai_models.executor.project import Materialization
from mai_models.executor.versioning import StepResult
from mai_models.graph import project as graph_of
from mai_models.lm.telemetry import plot_loss_curve
from mai_models.settings import load_settings
from mai_models.tracking.state import read_state


def _assets() -> dict:
    settings = FoundrySettings().load()
    return {
        a.key.to_user_string(): a for a in graph_assets(graph_of(settings, load_params(settings.params_file)))
    }


def test_every_asset_has_owners_tags_and_a_described_launchpad_config(project: Path) -> None:
    assets = _assets()
    moe = assets["moe_pretrain"]
    assert moe.owners_by_key[moe.key] == ["team:lm"]
    assert {k: v for k, v in moe.tags_by_key[moe.key].items() if "/" not in k} == {
        "plane": "lm",
        "compute": "heavy",
        "automation": "scheduled",
    }
    for asset in assets.values():
        assert asset.owners_by_key[asset.key] and asset.tags_by_key[asset.key]["plane"]
    fields = moe.op.config_schema.config_type.fields
    steps = fields["lm__steps"]
    assert not steps.is_required and re.fullmatch(r"lm\.steps: .*params\.yaml has \d+", steps.description)
    assert "lm__parallel__expert" in fields and "force" in fields and "overrides" in fields
    # A step's launchpad lists its own parameters only.
    raw = assets["raw_documents"].op.config_schema.config_type.fields
    assert "ingest__max_doc_bytes" in raw and not any(name.startswith("lm__") for name in raw)


def test_a_launchpad_field_overrides_and_the_page_links_its_mlflow_run(project: Path, monkeypatch) -> None:
    monkeypatch.setenv("MAI_MLFLOW_UI_URL", "http://mlflow.example:8080")
    asset, checks = in_groups("text")
    raw = [a for a in asset if a.key.to_user_string() == "raw_documents"]
    config = {"ops": {"raw_documents": {"config": {"ingest__max_doc_bytes": 100_000}}}}
    result = materialize(
        raw, instance=DagsterInstance.ephemeral(), resources=default_resources(), run_config=config
    )
    meta = materializations(result)["raw_documents"]
    settings = load_settings()
    overridden = graph_of(settings, load_params(settings.params_file, ["ingest.max_doc_bytes=100000"]))
    assert meta["data_version"].value == overridden.version("raw_documents")
    assert meta["data_version"].value != graph_of(settings, load_params(settings.params_file)).version(
        "raw_documents"
    )
    link = meta["mlflow_run"].value
    run_id = meta["mlflow_run_id"].value
    assert re.fullmatch(
        rf"http://mlflow\.example:8080/#/experiments/\d+/runs/{run_id}\?workflowType=machine_learning", link
    )
    # Reused, the page links the same run from the step's state, without asking MLflow.
    again = materialize(
        raw, instance=DagsterInstance.ephemeral(), resources=default_resources(), run_config=config
    )
    reused = materializations(again)["raw_documents"]
    assert reused["reused"].value is True and reused["mlflow_run"].value == link
    assert read_state(settings, "raw_documents")["mlflow_experiment_id"] == link.split("/")[5]


def test_plots_are_shown_inline(tmp_path: Path) -> None:
    curve = plot_loss_curve({"train/loss": [(1, 3.0), (2, 2.5)]}, tmp_path / "loss_curve.png")
    out = tmp_path / "data" / "arena"
    (out / "text").mkdir(parents=True)
    board = plot_loss_curve({"rating": [(1, 1.0)]}, out / "text" / "leaderboard.png")
    settings = load_settings(root=tmp_path)
    graph = graph_of(settings, load_params(None))
    done = Materialization(
        StepResult("arena", out, "v" * 16, False, {}), "c", None, None, live={"plots": [str(curve)]}
    )
    found = plots(graph, graph.step("arena"), done)
    assert found == [curve, board]
    shown = plots_markdown(found).value
    images = re.findall(r"!\[(\w+)\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", shown)
    assert [name for name, _ in images] == ["loss_curve", "leaderboard"]
    assert base64.b64decode(images[0][1]) == curve.read_bytes()
