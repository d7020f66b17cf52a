"""Retraining from the champion, on real MLflow (sqlite), DVC and the trainers in this process:
`lm.init_from: champion` continues from the mai-moe champion's weights and AdamW state (a new champion
is a new version, an unchanged tick is a no-op), shapes that changed start fresh and are reported,
a warm start across tokenizers is refused until `tokenizer.freeze_to: champion` copies the champion's,
and `tts.init_from: champion` continues the voice's acoustic model. Champions are made as the gate
makes them (`apply_champions`)."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
import torch
from conftest import InProcessTrainer, enter_project

from mai_models.config import load_params
from mai_models.errors import MaiUserError
from mai_models.eval.champions import apply_champions
from mai_models.executor.project import Materialization, Project
from mai_models.executor.versioning import current_version
from mai_models.graph import project
from mai_models.settings import load_settings
from mai_models.tracking.champion_output import champion
from mai_models.tracking.dvc import Dvc
from mai_models.tracking.registry import LM_MODEL, VOICE_MODEL
from mai_models.tracking.warm_start import WARM_START_FILE

pytestmark = pytest.mark.slow

LM = [
    "lm.preset=tiny",
    "lm.steps=12",
    "lm.lr=0.01",
    "lm.min_lr=0.001",
    "lm.micro_batch_size=2",
    "lm.global_batch_size=4",
    "lm.eval_interval=100",
    "lm.eval_iters=1",
    "lm.checkpoint_interval=100",
    "lm.warmup_steps=1",
    "lm.launch.threads_per_rank=2",
    "lm.init_from=champion",
]
SPEECH = [
    "speech.demo.sentences=24",
    "speech.demo.heldout_sentences=3",
    "speech_validation.min_utterances=10",
    "speech_validation.min_total_minutes=0.5",
    "tts.preset=tiny",
    "tts.wer_sentences=0",
    "tts.eval_interval=100",  # samples at the last step only
    "tts.vocoder.steps=2",  # the voice needs one; only its acoustic model is retrained here
]


def _graph(root: Path, overrides: list[str]) -> Project:
    settings = load_settings(root=root)
    # A stated peak skips the trainer's GEMM timing (only the MFU metric uses it).
    launcher = InProcessTrainer(peak_flops_per_device=1e12)
    return project(settings, load_params(settings.params_file, overrides), launcher=launcher)


def _materialize(root: Path, name: str, overrides: list[str]) -> Materialization:
    graph = _graph(root, overrides)
    return graph.materialize(name, dvc=Dvc(graph.settings), track=True)


def _promote(root: Path, model: str, version: str) -> None:
    """What the gate's champion step does when it promotes ``version``."""
    graph = _graph(root, [])
    previous = champion(graph.settings, model)
    decision = {"changed": True, "version": version, "previous": previous["version"] if previous else None}
    apply_champions(graph.context("champion"), {model: decision})


def _record(result: Materialization) -> dict:
    """The output's start record: read it before the next build of the step replaces the output."""
    return json.loads((result.result.out_dir / WARM_START_FILE).read_text())


def _train_losses(work_dir: Path) -> list[float]:
    rows = [json.loads(line) for line in (work_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["train/loss"] for r in rows if "train/loss" in r]


def _work_dir(root: Path, result: Materialization) -> Path:
    return load_settings(root=root).home / "work" / "moe_pretrain" / result.result.version


def _client(root: Path) -> mlflow.MlflowClient:
    return mlflow.MlflowClient(load_settings(root=root).mlflow_tracking_uri)


WIDER = [*LM, "lm.steps=2", "lm.model={num_experts: 8}"]
FROZEN = ["tokenizer.freeze_to=champion"]
TEXT_STEPS = ("raw_documents", "clean_documents", "bpe_tokenizer", "token_shards")


def _land_new_documents(root: Path) -> None:
    """A landing drop: documents the champion never saw, in the corpus's own words."""
    import random

    from mai_models.tokenizer.bpe import iter_texts, split_shards

    words = " ".join(next(iter_texts(split_shards(root / "data" / "clean_documents", "train")))).split()
    rng = random.Random(0)
    docs = [" ".join(rng.choices(words, k=150)) for _ in range(30)]
    (root / "data" / "landing" / "drop-1.jsonl").write_text(
        "".join(json.dumps({"text": d}) + "\n" for d in docs)
    )


@pytest.fixture(scope="module")
def retrained(lm_project: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict]]:
    """The retraining story: v1 asks for a warm start before any champion exists; promoted, it is
    warm started on a landing drop with its tokenizer frozen (v2); an unchanged tick, and the tick
    after v2's promotion, are no-ops; a wider MoE (v3) continues from v2."""
    from mai_models.lm.process_groups import destroy_parallel

    root = tmp_path_factory.mktemp("retrain") / "proj"
    shutil.copytree(lm_project, root, symlinks=True)
    threads = torch.get_num_threads()
    runs: dict = {"original tokenizer": (root / "data" / "bpe_tokenizer" / "tokenizer.json").read_bytes()}
    records: dict = {}
    try:
        with pytest.MonkeyPatch.context() as mp:
            enter_project(mp, root)
            runs["v1"] = _materialize(root, "moe_pretrain", LM)
            records["v1"] = _record(runs["v1"])
            _promote(root, LM_MODEL, runs["v1"].extra["model_version"])
            runs["v1 promoted"] = _graph(root, LM).version("moe_pretrain")

            runs["shards seen by v1"] = current_version(root / "data" / "token_shards")
            _land_new_documents(root)
            data = _graph(root, [*LM, *FROZEN])
            runs["frozen tokenizer"] = data.version("bpe_tokenizer")
            for name in TEXT_STEPS:
                data.run(name)
            runs["shards seen by v2"] = current_version(root / "data" / "token_shards")
            runs["v2"] = _materialize(root, "moe_pretrain", [*LM, *FROZEN])
            records["v2"] = _record(runs["v2"])
            runs["rerun"] = _materialize(root, "moe_pretrain", [*LM, *FROZEN])

            runs["wider, champion v1"] = _graph(root, [*WIDER, *FROZEN]).version("moe_pretrain")
            _promote(root, LM_MODEL, runs["v2"].extra["model_version"])
            runs["wider, champion v2"] = _graph(root, [*WIDER, *FROZEN]).version("moe_pretrain")
            runs["v2 promoted"] = _graph(root, [*LM, *FROZEN]).version("moe_pretrain")
            runs["v3"] = _materialize(root, "moe_pretrain", [*WIDER, *FROZEN])
            records["v3"] = _record(runs["v3"])
            yield root, {**runs, "records": records}
    finally:
        destroy_parallel()  # the in-process trainer leaves one-rank groups up; later tests start clean
        torch.set_num_threads(threads)


def test_no_champion_yet_trains_from_scratch_and_records_why(retrained: tuple[Path, dict]) -> None:
    root, runs = retrained
    v1 = runs["records"]["v1"]
    assert v1["init_from"] == "champion" and v1["parent"] is None
    assert v1["reason"] == "no mai-moe champion yet: trained from scratch"
    assert "tensors_taken" not in v1
    tags = _client(root).get_run(runs["v1"].mlflow_run_id).data.tags
    assert tags["mai.init_from"] == "champion" and tags["mai.parent_version"] == "none"


def test_warm_start_continues_from_the_champion_on_new_data(retrained: tuple[Path, dict]) -> None:
    root, runs = retrained
    v1, v2 = runs["v1"], runs["v2"]
    assert not v2.result.reused and v2.extra["model_version"] == "2"
    assert v2.result.stats["tokens_seen"] == v1.result.stats["tokens_seen"]

    champion_losses = _train_losses(_work_dir(root, v1))
    warm_losses = _train_losses(_work_dir(root, v2))
    scratch_first, champion_final = champion_losses[0], v1.result.stats["final_train_loss"]
    assert champion_final < scratch_first - 0.5, (scratch_first, champion_final)
    # Step 1's loss is measured before its update: the champion's weights on the new run's first batch.
    assert abs(warm_losses[0] - champion_final) < 0.35, (warm_losses[0], champion_final)
    assert warm_losses[0] < scratch_first - 0.4, (warm_losses[0], scratch_first)

    record = runs["records"]["v2"]
    assert record["parent"] == "mai-moe v1" and record["reason"] == "warm start from the champion mai-moe v1"
    n_tensors = len(record["tensors_taken"])
    assert record["tensors_fresh"] == [] and n_tensors == 29
    assert record["optimizer_moments_fresh"] == 0 and record["parent_optimizer_steps"] == 12
    assert v2.result.stats["init"] == {
        "init_from": "champion",
        "parent": "mai-moe v1",
        "tensors_taken": n_tensors,
        "tensors_fresh": 0,
    }
    client = _client(root)
    run = client.get_run(v2.mlflow_run_id)
    assert run.data.tags["mai.parent_version"] == "mai-moe v1"
    assert run.data.tags["mai.warm_start.tensors_taken"] == str(n_tensors)
    assert WARM_START_FILE in {a.path for a in client.list_artifacts(v2.mlflow_run_id)}
    version = client.get_model_version(LM_MODEL, "2")
    assert version.tags["mai.parent_version"] == "mai-moe v1" and version.tags["mai.init_from"] == "champion"


def test_a_new_champion_is_a_new_version_and_an_unchanged_tick_a_no_op(retrained: tuple[Path, dict]) -> None:
    _, runs = retrained
    assert runs["wider, champion v1"] != runs["wider, champion v2"]
    assert runs["rerun"].result.reused and runs["rerun"].result.version == runs["v2"].result.version
    # Promoted, a model is the champion its own step would continue from: retraining it on its own
    # data is no new candidate, so its version still names the parent it was trained from.
    assert runs["v1 promoted"] == runs["v1"].result.version
    assert runs["v2 promoted"] == runs["v2"].result.version


def test_changed_shapes_start_fresh_and_are_reported(retrained: tuple[Path, dict]) -> None:
    root, runs = retrained
    record = runs["records"]["v3"]
    assert record["parent"] == "mai-moe v2"
    assert record["tensors_fresh"] == sorted(
        f"decoder.layers.{layer}.mlp.{part}"
        for layer in (0, 1)
        for part in (
            *(f"experts.local_experts.{e}.linear_fc{fc}.weight" for e in range(8) for fc in (1, 2)),
            "router.weight",
        )
    )
    assert "embedding.word_embeddings.weight" in record["tensors_taken"]
    assert "decoder.layers.0.self_attention.linear_qkv.weight" in record["tensors_taken"]
    assert len(record["tensors_taken"]) == 29 - 2 * (1 + 4 * 2)  # all but the routers and experts
    # Each fresh tensor is a parameter: its AdamW moments start empty too.
    assert record["optimizer_moments_fresh"] == len(record["tensors_fresh"])
    tags = _client(root).get_run(runs["v3"].mlflow_run_id).data.tags
    assert tags["mai.warm_start.tensors_fresh"] == str(len(record["tensors_fresh"]))


def test_lineage_shows_each_version_its_parent_and_the_data_it_saw(
    retrained: tuple[Path, dict], tmp_path: Path
) -> None:
    from mai_models.export.submission import format_lineage
    from mai_models.tracking.warm_start import ancestry

    root, runs = retrained
    models = ancestry(load_settings(root=root), LM_MODEL, "3")
    assert [(m["version"], m["parent"]) for m in models] == [
        ("mai-moe v1", None),
        ("mai-moe v2", "mai-moe v1"),
        ("mai-moe v3", "mai-moe v2"),
    ]
    assert runs["shards seen by v1"] != runs["shards seen by v2"]  # the landing drop
    assert [m["data"]["token_shards"] for m in models] == [
        runs["shards seen by v1"],
        runs["shards seen by v2"],
        runs["shards seen by v2"],
    ]
    # The bundle keeps this chain in its manifest; `mai lineage` prints it.
    bundle = tmp_path / "mai-moe-v3"
    bundle.mkdir()
    manifest = {
        "model": "mai-moe-v3",
        "mlflow": {"registered_model": LM_MODEL, "version": "3"},
        "git_commit": None,
        "lineage": [],
        "model_lineage": models,
    }
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    lines = format_lineage(bundle).splitlines()
    assert lines[1] == "  models: mai-moe v1 -> mai-moe v2 -> mai-moe v3"
    assert lines[2].startswith("    mai-moe v1  from scratch, trained on bpe_tokenizer@")
    assert lines[3].startswith("    mai-moe v2  warm start from mai-moe v1, trained on bpe_tokenizer@")
    assert lines[3].endswith(f"token_shards@{runs['shards seen by v2']}")


def test_frozen_tokenizer_copies_the_champion_and_warm_starts_across_tokenizers_are_refused(
    retrained: tuple[Path, dict],
) -> None:
    from tokenizers import Tokenizer

    from mai_models.lm.moe_pretrain_step import start
    from mai_models.lm.warm_start import init_spec

    root, runs = retrained
    original = runs["original tokenizer"]
    recorded = _client(root).get_model_version(LM_MODEL, "1").tags["mai.tokenizer_sha256"]
    assert recorded == hashlib.sha256(original).hexdigest()

    other = [*LM, "tokenizer.vocab_size=900"]
    graph = _graph(root, other)
    graph.run("bpe_tokenizer")
    graph.run("token_shards")
    with pytest.raises(MaiUserError) as refused:
        graph.run("moe_pretrain")
    message = str(refused.value)
    assert "\n" not in message and "set tokenizer.freeze_to: champion" in message
    assert message.startswith("lm.init_from: champion refused: mai-moe v2 was trained with another tokenizer")
    # The champion's output left the work tree (v3 replaced it): it came back from the DVC cache.
    assert (root / ".mai" / "champions" / "mai-moe-v2" / "moe_pretrain" / "tokenizer.json").exists()

    frozen = _graph(root, [*other, *FROZEN])
    assert frozen.upstream("bpe_tokenizer") == ()  # it reads no corpus: new data cannot change it
    # Its version follows the champion's tokenizer: v2 kept v1's, so the version is the one of v1's day.
    assert frozen.version("bpe_tokenizer") == runs["frozen tokenizer"]
    tokenizer, _ = frozen.run("bpe_tokenizer")
    assert tokenizer.stats["frozen_to"] == "mai-moe v2"
    assert (root / "data" / "bpe_tokenizer" / "tokenizer.json").read_bytes() == original
    shards, _ = frozen.run("token_shards")
    assert shards.stats["tokenizer_sha256"] == recorded
    assert shards.stats["vocab_size"] == Tokenizer.from_str(original.decode()).get_vocab_size()
    ctx = frozen.context("moe_pretrain")
    init = init_spec(ctx, start(ctx))
    assert init.parent == "mai-moe v2" and (init.checkpoint / "common.pt").exists()


def test_voice_warm_start_loads_the_champion_acoustic_model(
    lm_project: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    root = tmp_path_factory.mktemp("voice") / "proj"
    shutil.copytree(lm_project, root, symlinks=True)
    with pytest.MonkeyPatch.context() as mp:
        enter_project(mp, root)
        graph = _graph(root, SPEECH)
        for name in ("speech_demo_dataset", "speech_corpus", "speech_features"):
            graph.run(name)
        first = {n: _materialize(root, n, SPEECH) for n in ("tts_acoustic", "tts_vocoder", "mai_voice")}
        _promote(root, VOICE_MODEL, first["mai_voice"].extra["model_version"])
        one_step = ["tts.acoustic.steps=1"]
        scratch = _materialize(root, "tts_acoustic", [*SPEECH, *one_step])
        warm = _materialize(root, "tts_acoustic", [*SPEECH, *one_step, "tts.init_from=champion"])
        record = _record(warm)
        client = _client(root)
        tags = client.get_run(warm.mlflow_run_id).data.tags
        first_loss = {
            name: client.get_metric_history(run.mlflow_run_id, "train/loss")[0].value
            for name, run in (("scratch", scratch), ("warm", warm))
        }

    assert record["parent"] == "mai-voice v1" and record["tensors_fresh"] == []
    assert record["tensors_remapped"] == {}  # same corpus, same phonemes
    weights = torch.load(first["tts_acoustic"].result.out_dir / "acoustic.pt", weights_only=True)
    assert sorted(record["tensors_taken"]) == sorted(weights)
    assert record["optimizer_moments_fresh"] == 0
    # The champion's acoustic model left the work tree (the scratch run replaced it): restored from DVC.
    assert (root / ".mai" / "champions" / "mai-voice-v1" / "tts_acoustic" / "acoustic.pt").exists()
    assert tags["mai.parent_version"] == "mai-voice v1" and tags["mai.init_from"] == "champion"
    assert warm.result.stats["init"]["parent"] == "mai-voice v1"

    # Step 1's loss is measured before its update: the scratch model's, then the champion's.
    champion_final = first["tts_acoustic"].result.stats["final_loss"]
    assert first_loss["scratch"] > champion_final + 1.0, (first_loss, champion_final)
    gap = first_loss["scratch"] - champion_final
    assert abs(first_loss["warm"] - champion_final) < 0.5 * gap, (first_loss, champion_final)


def test_a_new_phoneme_keeps_every_known_phoneme_row_of_the_champion() -> None:
    """One phoneme more in new data shifts the sorted ids after it: rows follow their phonemes."""
    from mai_models.tts.acoustic import AcousticModel
    from mai_models.tts.presets import PRESETS
    from mai_models.tts.warm_start import load_parent, optimizer_moments, symbol_rows

    arch = PRESETS["tiny"].acoustic
    parent_vocab = ["<pad>", "<unk>", " ", "a", "b", "d"]
    vocab = ["<pad>", "<unk>", " ", "a", "b", "c", "d"]  # "c" is new: "d" moves from id 5 to 6
    torch.manual_seed(0)
    parent = AcousticModel(arch, len(parent_vocab), 16)
    parent_optimizer = torch.optim.AdamW(parent.parameters())
    ids = torch.tensor([[3, 4, 5]])
    parent(ids, torch.tensor([3]), torch.randn(1, 16, 8), torch.tensor([8]))["loss"].backward()
    parent_optimizer.step()
    moments = optimizer_moments(parent, parent_optimizer.state_dict())

    model = AcousticModel(arch, len(vocab), 16)
    fresh_c = model.embed.weight[5].detach().clone()
    optimizer = torch.optim.AdamW(model.parameters())
    rows = {"embed.weight": symbol_rows(vocab, parent_vocab)}
    report = load_parent(model, optimizer, parent.state_dict(), moments, rows)

    assert report["tensors_remapped"] == {"embed.weight": "6 of 7 rows"} and report["tensors_fresh"] == []
    assert torch.equal(model.embed.weight[6], parent.embed.weight[5])  # "d"
    assert torch.equal(model.embed.weight[:5], parent.embed.weight[:5])
    assert torch.equal(model.embed.weight[5], fresh_c)
    state = optimizer.state[model.embed.weight]
    assert torch.equal(state["exp_avg"][6], parent_optimizer.state[parent.embed.weight]["exp_avg"][5])
    assert not state["exp_avg"][5].any() and int(state["step"]) == 1
    for name, value in parent.state_dict().items():
        if name != "embed.weight":
            assert torch.equal(model.state_dict()[name], value), name
