"""The step graph is the one declaration every surface derives from: the Dagster assets and checks,
dvc.yaml, the CLI's --only choices, the demo report and the submission's lineage all agree with it."""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

import pytest
import yaml

import mai_models
from mai_models.cli import build_parser
from mai_models.config import load_params
from mai_models.executor.code_closure import closure, code_version
from mai_models.executor.dvc_stages import render
from mai_models.graph import COMMANDS, STEPS, project
from mai_models.settings import load_settings

REPO = Path(__file__).resolve().parents[1]
OWN_SPEECH = ["speech.sources=[{kind: ljspeech, path: recordings/mine}]"]


@pytest.fixture(scope="module")
def graph():
    settings = load_settings(root=REPO)
    return project(settings, load_params(REPO / "params.yaml"))


def test_committed_dvc_yaml_is_the_graph(graph) -> None:
    assert (REPO / "dvc.yaml").read_text() == render(graph), "dvc.yaml is stale: run `mai graph dvc-yaml`"


def test_dvc_stages_mirror_steps(graph) -> None:
    stages = yaml.safe_load(render(graph))["stages"]
    assert list(stages) == list(graph.steps)
    for name, stage in stages.items():
        step = graph.step(name)
        assert stage["outs"] == [f"data/{name}"]
        assert [d for d in stage["deps"] if d.startswith("data/")] == [
            *(f"data/{up}" for up in graph.upstream(name)),
            *(w for w in step.watched(graph.params) if w.startswith("data/")),
        ]
        assert stage.get("params", []) == list(step.params)
        for key in step.params:  # DVC reads them from params.yaml: a default-only key would fail there
            node = yaml.safe_load((REPO / "params.yaml").read_text())
            for part in key.split("."):
                assert part in node, f"{name}: {key} is not in params.yaml"
                node = node[part]
        # The code DVC watches is the code the step's version hashes.
        files = {str(p.relative_to(REPO)) for p in _closure_files(step)}
        watched = [d for d in stage["deps"] if d.startswith("mai_models")]
        assert all(any(f == d or f.startswith(d + "/") for d in watched) for f in files), name


def _closure_files(step):
    from mai_models.executor.code_closure import closure_files

    return closure_files((step.module, *step.code))


def test_cli_builds_exactly_the_dvc_stage_commands(graph) -> None:
    parser = build_parser()
    for name, stage in yaml.safe_load(render(graph))["stages"].items():
        args = parser.parse_args(stage["cmd"].split()[1:])
        assert args.only == name
        assert name in COMMANDS[graph.step(name).command]
    for command, names in COMMANDS.items():
        action = next(a for a in _subparser(parser, command)._actions if a.dest == "only")
        assert tuple(action.choices) == names, command


def _subparser(parser, command: str):
    for word in command.split():
        sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
        parser = sub.choices[word]
    return parser


def test_dagster_assets_and_checks_are_the_graph(graph) -> None:
    from pipelines.definitions import defs

    asset_graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in asset_graph.get_all_asset_keys()}
    assert keys == set(graph.steps)
    for name, step in graph.steps.items():
        node = asset_graph.get(_key(name))
        assert {p.to_user_string() for p in node.parent_keys} == set(graph.upstream(name)), name
        assert node.group_name == step.group
        assert node.code_version == graph.code_version(name)
        assert node.description == step.description
    checks = {(c.asset_key.to_user_string(), c.name) for c in asset_graph.asset_check_keys}
    assert checks == {(s.name, c.name) for s in graph.steps.values() for c in s.checks}
    assert checks >= {("raw_documents", "raw_documents_expectations"), ("arena", "champion_gate")}


def _key(name: str):
    from dagster import AssetKey

    return AssetKey(name)


def test_every_step_module_is_registered_once() -> None:
    """A step is one ``*_step.py`` in its stage's folder plus one registry line: none is left out."""
    declared = {
        info.name
        for info in pkgutil.walk_packages(mai_models.__path__, "mai_models.")
        if info.name.endswith("_step")
    }
    registered = [s.module for s in STEPS]
    assert sorted(registered) == sorted(declared)
    assert len({s.name for s in STEPS}) == len(STEPS)
    for step in STEPS:
        assert importlib.import_module(step.module).STEP is step
        stage = step.module.split(".")[1]
        assert (Path(mai_models.__file__).parent / stage).is_dir(), step.module


def test_upstream_steps_come_first_and_exist() -> None:
    for params in (load_params(REPO / "params.yaml"), load_params(REPO / "params.yaml", OWN_SPEECH)):
        names = [s.name for s in STEPS if s.is_enabled(params)]
        for i, step in enumerate(s for s in STEPS if s.is_enabled(params)):
            assert set(step.upstream_for(params)) <= set(names[:i]), step.name


def test_code_versions_follow_each_steps_own_imports() -> None:
    by_name = {s.name: s for s in STEPS}
    shards = closure((by_name["token_shards"].module,))
    assert "mai_models.tokenizer.shards" in shards and not any(m.startswith("mai_models.lm") for m in shards)
    # The trainer runs in torchrun ranks, never imported by the step itself: its entry module counts.
    pretrain = closure((by_name["moe_pretrain"].module, *by_name["moe_pretrain"].code))
    assert {"mai_models.lm.trainer", "mai_models.lm.model", "mai_models.lm.dist_checkpoint"} <= set(pretrain)
    # Bookkeeping (tracking, settings, the executor) never makes a step stale.
    assert not any(m.startswith(("mai_models.tracking", "mai_models.executor")) for m in pretrain)
    assert code_version((by_name["token_shards"].module,)) != code_version((by_name["bpe_tokenizer"].module,))


def test_lineage_and_speech_sources_follow_the_graph(graph) -> None:
    assert graph.ancestors("arena_submission") == [n for n in graph.steps if n != "arena_submission"]
    own = project(load_settings(root=REPO), load_params(REPO / "params.yaml", OWN_SPEECH))
    assert "speech_demo_dataset" not in own.steps
    assert own.upstream("speech_corpus") == () and own.upstream("tts_evaluation") == (
        "mai_voice",
        "speech_corpus",
    )
    assert yaml.safe_load(render(own))["stages"]["speech_corpus"]["deps"][-1] == "recordings/mine"
