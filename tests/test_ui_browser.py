"""The Dagster and MLflow UIs as their users see them, in real Chromium (Debian's `chromium`, driven by
Playwright; nothing downloads a browser), against `mai ui` on a project built with the tiny presets:
the text plane and two trainings of the MoE model (the second a retraining with another seed, set in
the launchpad's own field). The screenshots go to docs/images/ for the README's tour.

Without the browser these tests fail: they are how CI knows the UIs work."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from conftest import REPO, enter_project, materializations
from dagster import DagsterInstance, materialize
from playwright.sync_api import Browser, Page, expect, sync_playwright
from test_eval_pipeline import SETTINGS

from assets.catalog import in_groups
from assets.resources import DvcVersioning, default_resources
from mai_models.config import load_params
from mai_models.graph import project
from mai_models.settings import load_settings

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
IMAGES = REPO / "docs" / "images"
TRAINING = ("raw_documents", "clean_documents", "bpe_tokenizer", "token_shards", "moe_pretrain")
RETRAIN_SEED = 4321
# The test drives every run itself: no automation daemon starting evaluations beside it.
INSTANCE = """\
telemetry:
  enabled: false
concurrency:
  pools:
    default_limit: 1
auto_materialize:
  enabled: false
  use_sensors: false
"""
# MLflow's assistant panel opens by itself on a first visit and covers a third of the page: start as a
# user who closed it. (The GenAI/Model training choice is left alone: that is what the links set.)
NO_ASSISTANT = (
    "localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true');"
    "localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false');"
)
SLOW = 120_000  # ms: pages of both UIs on 2 busy cores
expect.set_options(timeout=SLOW)


@dataclass
class Uis:
    root: Path
    dagster: str
    mlflow: str
    banner: str
    trainings: list[str]  # the two moe_pretrain MLflow runs, oldest first
    steps: list[str]  # every asset of the project
    checks: dict[str, list[tuple[str, str]]]  # asset -> (check, description)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _post(url: str, query: str) -> dict | None:
    body = json.dumps({"query": query}).encode()
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())
    except (OSError, ValueError):
        return None


def _up(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5):
            return True
    except OSError:
        return False


def _build() -> list[str]:
    """The text plane and moe_pretrain through Dagster into the project's own instance, then the
    retraining with another seed; returns the two training runs."""
    settings = load_settings()
    home = settings.dagster_home
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text(INSTANCE)
    assets, checks = in_groups("text", "lm")
    chosen = [a for a in assets if a.key.to_user_string() in TRAINING]
    keys = {a.key for a in chosen}
    resources = {**default_resources(), "dvc": DvcVersioning(enabled=False)}  # the UI's own run commits
    instance = DagsterInstance.from_config(str(home))
    try:
        first = materialize(
            [*chosen, *(c for c in checks if {k.asset_key for k in c.check_keys} <= keys)],
            instance=instance,
            resources=resources,
        )
        moe = [a for a in chosen if a.key.to_user_string() == "moe_pretrain"]
        retrain = {"ops": {"moe_pretrain": {"config": {"lm__seed": RETRAIN_SEED}}}}
        second = materialize(moe, instance=instance, resources=resources, run_config=retrain)
    finally:
        instance.dispose()
    return [materializations(r)["moe_pretrain"]["mlflow_run_id"].value for r in (first, second)]


@pytest.fixture(scope="module")
def uis(lm_project: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Uis]:
    root = tmp_path_factory.mktemp("ui") / "proj"
    shutil.copytree(lm_project, root, symlinks=True)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["lm"].update(SETTINGS["lm"])
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    dagster_port, mlflow_port = _free_port(), _free_port()
    dagster, mlflow = f"http://127.0.0.1:{dagster_port}", f"http://127.0.0.1:{mlflow_port}"
    with pytest.MonkeyPatch.context() as mp:
        enter_project(mp, root)
        mp.setenv("MAI_MLFLOW_UI_URL", mlflow)
        trainings = _build()
        settings = load_settings()
        graph = project(settings, load_params(settings.params_file))
        checks = {
            name: [(c.name, c.description) for c in step.checks]
            for name, step in graph.steps.items()
            if step.checks
        }
        log = root / "ui.log"
        with log.open("w") as out:
            ui = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "mai_models.cli",
                    "ui",
                    "--dagster-port",
                    str(dagster_port),
                    "--mlflow-port",
                    str(mlflow_port),
                ],
                cwd=root,
                env=dict(os.environ),
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),  # as from a script
            )
        try:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline and not (
                _up(mlflow) and _post(f"{dagster}/graphql", "{ version }")
            ):
                assert ui.poll() is None, log.read_text()[-3000:]
                time.sleep(2)
            # The first visit's "Join the Dagster community" dialog, answered as the instance records it.
            assert _post(f"{dagster}/graphql", "mutation { setNuxSeen }"), log.read_text()[-3000:]
            yield Uis(root, dagster, mlflow, log.read_text(), trainings, list(graph.steps), checks)
        finally:
            ui.send_signal(signal.SIGTERM)
            ui.wait(timeout=90)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1600, "height": 1000})
    context.add_init_script(NO_ASSISTANT)
    context.set_default_timeout(SLOW)
    shown = context.new_page()
    yield shown
    context.close()


def _shot(page: Page, name: str) -> None:
    IMAGES.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(IMAGES / f"{name}.png"))


def _run_name(uis: Uis, run_id: str) -> str:
    import mlflow

    return mlflow.MlflowClient(f"sqlite:///{uis.root / '.mai' / 'mlflow.db'}").get_run(run_id).info.run_name


def _label_of(name: str, label: str) -> bool:
    """Whether a node's label names ``name``: a zoomed-out graph cuts long names in the middle."""
    head, cut, tail = label.strip().partition("…")
    return label.strip() == name or bool(cut) and name.startswith(head) and name.endswith(tail)


def test_the_asset_graph_lists_every_asset_and_check(uis: Uis, page: Page) -> None:
    from mai_models.graph import GROUPS, STEPS

    groups = {s.name: s.group for s in STEPS}
    for group in GROUPS:
        page.goto(f"{uis.dagster}/locations/pipelines.definitions/asset-groups/{group}/lineage")
        names = page.locator("[class*='AssetNode_assetName']")
        expect(names.first).to_be_visible()
        shown = names.all_inner_texts()
        for step in (s for s in uis.steps if groups[s] == group):
            assert any(_label_of(step, label) for label in shown), (step, shown)
        if group == "text":
            _shot(page, "dagster_lineage")
    for asset, checks in uis.checks.items():
        page.goto(f"{uis.dagster}/assets/{asset}?view=checks")
        for name, description in checks:
            expect(page.get_by_text(name, exact=True).first).to_be_visible()
            expect(page.get_by_text(description).first).to_be_visible()
    # An executed check shows why it passed: its own line and each expectation's result.
    page.goto(f"{uis.dagster}/assets/raw_documents?view=checks")
    expect(page.get_by_text("expectations passed on").first).to_be_visible()
    expect(page.get_by_text("ok: no duplicates")).to_be_visible()
    _shot(page, "dagster_check")


def _runs(uis: Uis) -> dict[str, str]:
    found = _post(f"{uis.dagster}/graphql", "{ runsOrError { ... on Runs { results { runId status } } } }")
    return {r["runId"]: r["status"] for r in found["data"]["runsOrError"]["results"]}


def test_materialize_on_a_data_asset_starts_a_run_that_succeeds(uis: Uis, page: Page) -> None:
    before = _runs(uis)
    page.goto(f"{uis.dagster}/assets/raw_documents")
    page.get_by_role("button", name=re.compile(r"\bMaterialize$")).click()  # its icon's name comes first
    deadline = time.monotonic() + 600
    launched: dict[str, str] = {}
    while time.monotonic() < deadline:
        launched = {r: s for r, s in _runs(uis).items() if r not in before}
        if launched and all(s in ("SUCCESS", "FAILURE", "CANCELED") for s in launched.values()):
            break
        time.sleep(3)
    assert len(launched) == 1 and set(launched.values()) == {"SUCCESS"}, (launched, uis.root / "ui.log")
    (run_id,) = launched
    page.goto(f"{uis.dagster}/runs/{run_id}")
    expect(page.get_by_text("Success").first).to_be_visible()
    expect(page.get_by_text("raw_documents").first).to_be_visible()
    _shot(page, "dagster_run")


def test_the_asset_page_shows_the_plots_and_links_to_mlflow(uis: Uis, page: Page) -> None:
    page.goto(f"{uis.dagster}/assets/moe_pretrain")
    page_of_run = f"/runs/{uis.trainings[1]}?workflowType=machine_learning"
    run = f"a[href^='{uis.mlflow}/#/experiments/'][href$='{page_of_run}']"
    expect(page.locator(run).first).to_be_visible()  # the value, and its "open in a new tab" icon
    expect(page.get_by_text("Owners", exact=True)).to_be_visible()  # team:lm, shown as its name
    expect(page.get_by_text("plane: lm", exact=True)).to_be_visible()
    page.get_by_text("[Show Markdown]").first.click()
    plots = page.locator("img[src^='data:image/png']")
    expect(plots).to_have_count(2)
    for i in range(2):  # the pictures decode and draw, not only their tags
        assert plots.nth(i).evaluate("img => img.complete && img.naturalWidth") > 100
    expect(page.get_by_text("loss_curve", exact=True)).to_be_visible()
    expect(page.get_by_text("expert_load_heatmap", exact=True)).to_be_visible()
    _shot(page, "dagster_asset_plots")


def test_mlflow_opens_the_experiment_on_its_training_runs(uis: Uis, page: Page) -> None:
    """The link `mai ui` prints for the lm plane, in a browser that never chose a view."""
    url = re.search(r"mai-foundry/lm: (\S+)", uis.banner).group(1)
    page.goto(url)
    for run_id in uis.trainings:
        expect(page.get_by_text(_run_name(uis, run_id), exact=True).first).to_be_visible()
    assert "/runs" in page.url and "traces" not in page.url.lower()
    _shot(page, "mlflow_runs")


def test_mlflow_compares_two_trainings_loss_curves(uis: Uis, page: Page) -> None:
    """From the new version's page, one click charts both trainings' losses."""
    page.goto(f"{uis.mlflow}/#/models/mai-moe/versions/2?workflowType=machine_learning")
    link = page.get_by_role("link", name="Loss curves of v1 and v2")
    with page.context.expect_page() as opened:
        link.click()
    chart = opened.value
    chart.set_default_timeout(SLOW)
    for run_id in uis.trainings:
        expect(chart.get_by_text(f"{_run_name(uis, run_id)} (train/loss)").first).to_be_visible()
    expect(chart.locator(".js-plotly-plot").first).to_be_visible()
    assert chart.locator(".js-plotly-plot .scatterlayer .trace").count() >= 4  # 2 runs x train/valid
    _shot(chart, "mlflow_loss_compare")


def test_the_registered_model_shows_its_aliases_and_description(uis: Uis, page: Page) -> None:
    page.goto(f"{uis.mlflow}/#/models/mai-moe?workflowType=machine_learning")
    expect(page.get_by_text("The MAI Foundry MoE language model").first).to_be_visible()
    expect(page.get_by_text("@ candidate").first).to_be_visible()
    _shot(page, "mlflow_model")
    page.goto(f"{uis.mlflow}/#/models/mai-moe/versions/2?workflowType=machine_learning")
    expect(page.get_by_text("mai-moe v2", exact=True)).to_be_visible()
    expect(page.get_by_text("@ candidate").first).to_be_visible()
    expect(page.get_by_role("link", name=_run_name(uis, uis.trainings[1])).first).to_be_visible()
    expect(page.get_by_role("link", name="plots/loss_curve.png")).to_be_visible()
    _shot(page, "mlflow_version")
