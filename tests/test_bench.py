"""``mai bench``: the common result line, the arena baseline against ours, the tokenize comparison on a
tiny real corpus, the TTS audio length without our padding, and moe-train's refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mai_models.bench.report import Side, bench_result, versus
from mai_models.errors import MaiUserError

COMMON = {
    "benchmark",
    "metric",
    "ours",
    "ours_version",
    "baseline",
    "baseline_version",
    "repeats",
    "ours_median",
    "baseline_median",
    "ours_all",
    "baseline_all",
    "ratio",
    "ratio_meaning",
    "host",
}


def _check_common(result: dict, benchmark: str) -> None:
    assert set(result) >= COMMON
    assert result["benchmark"] == benchmark
    assert (
        result["baseline"]
        and result["baseline_version"]
        and "not installed" not in result["baseline_version"]
    )
    n_ours, n_base = result["repeats"]["ours"], result["repeats"]["baseline"]
    assert len(result["ours_all"]) == n_ours >= 1 and len(result["baseline_all"]) == n_base >= 1
    assert result["ours_median"] == pytest.approx(float(np.median(result["ours_all"])), rel=1e-3)
    assert result["baseline_median"] == pytest.approx(float(np.median(result["baseline_all"])), rel=1e-3)
    json.loads(json.dumps(result))  # the CLI prints it as one JSON line


def test_result_line_states_the_ratio_in_one_direction():
    fast, slow = Side("ours", "1.0", [1.0, 2.0, 3.0]), Side("peer", "2.0", [4.0, 6.0, 8.0])
    timed = bench_result("x", "seconds", False, fast, slow, extra=1)
    assert timed["ratio"] == pytest.approx(3.0) and ">1 = ours better" in timed["ratio_meaning"]
    assert timed["repeats"] == {"ours": 3, "baseline": 3} and timed["extra"] == 1
    throughput = bench_result("x", "tokens/s", True, Side("ours", "1", [30.0]), Side("peer", "1", [10.0]))
    assert throughput["ratio"] == pytest.approx(3.0)
    assert versus(Side("ours@2", "1", [2.0]), slow, False)["ratio"] == pytest.approx(3.0)
    with pytest.raises(ValueError, match="clash"):
        bench_result("x", "seconds", False, fast, slow, ratio=2.0)


def test_fastchat_baseline_and_ours_agree_on_ratings_and_bounds():
    from mai_models.bench import fastchat_bt
    from mai_models.bench.arena import synthetic_battles
    from mai_models.eval.ratings import bootstrap_bt, compute_bt

    frame, _ = synthetic_battles(4000, 6, seed=3)
    ours, theirs = compute_bt(frame), fastchat_bt.mle_elo(frame)
    assert set(ours) == set(theirs.index)
    assert max(abs(ours[m] - theirs[m]) for m in ours) < 0.05  # rating points (scale 400)
    # The same generator seed gives both bootstraps the same resampled battles, round for round.
    boot_ours = bootstrap_bt(frame, rounds=4, seed=7)
    boot_theirs = fastchat_bt.bootstrap(frame, 4, np.random.default_rng(7))
    assert (boot_ours - boot_theirs[boot_ours.columns]).abs().max().max() < 0.05


def test_arena_bench_times_both_sides_in_full():
    from mai_models.bench.arena import run

    result = run(battles=3000, models=5, rounds=5, repeats=1)
    _check_common(result, "arena")
    assert "FastChat" in result["baseline"] and result["baseline_version"].startswith("scikit-learn ")
    assert result["rounds"] == 5 and result["repeats"] == {"ours": 1, "baseline": 1}
    assert result["ratio"] == pytest.approx(result["baseline_median"] / result["ours_median"], rel=1e-2)
    assert result["max_rating_diff_point"] < 0.05 and result["max_rating_diff_ci_bounds"] < 0.05
    assert not any("extrapolat" in key for key in result)


def test_tokenize_bench_compares_the_same_encode_call(tmp_path: Path):
    from test_token_shards import write_clean

    from mai_models.bench.tokenize import run
    from mai_models.config import TokenizerConfig
    from mai_models.tokenizer.bpe import EOD_TOKEN, train_tokenizer

    clean = tmp_path / "clean"
    docs = [
        f"Document {i}: the quick brown fox jumps over the lazy dog; {EOD_TOKEN} stays text."
        for i in range(60)
    ]
    write_clean(clean, "train", docs[:50], shard_docs=20)
    write_clean(clean, "valid", docs[50:], shard_docs=20)
    train_tokenizer(TokenizerConfig(vocab_size=320, min_frequency=1), clean, tmp_path / "tok")

    result = run(clean, tmp_path / "tok", workers=1, repeats=1)
    _check_common(result, "tokenize")
    assert result["baseline_version"].startswith("tokenizers ")
    assert "encode_batch_fast" in result["baseline"] and "add_special_tokens=False" in result["encode_call"]
    # Checked id for id: the stage wrote the baseline's tokens plus one EOD per document.
    assert result["same_ids_plus_eod"] is True
    assert result["ours_detail"]["tokens"] == result["baseline_detail"]["tokens"] + len(docs)


def test_tts_speech_seconds_leave_out_our_sentence_pauses(tmp_path: Path):
    from test_serve import _tiny_voice

    from mai_models.bench.tts_rtf import speech_seconds
    from mai_models.tts.engine import SENTENCE_PAUSE_SECONDS
    from mai_models.tts.voice import load_onnx_voice

    voice = load_onnx_voice(_tiny_voice(tmp_path / "bundle"), threads=1)
    text = "The quick brown fox. She sells sea shells. How much wood?"
    synthesis = voice.synthesize(text)
    assert len(synthesis.sentences) == 3
    pauses = 2 * int(SENTENCE_PAUSE_SECONDS * voice.sample_rate) / voice.sample_rate
    assert speech_seconds(voice, text, len(synthesis.wave)) == pytest.approx(synthesis.seconds - pauses)


@pytest.mark.parametrize(
    "overrides, named",
    [
        ({"moe_z_loss_coeff": 1e-3}, "z-loss"),
        ({"moe_expert_capacity_factor": 1.25}, "capacity"),
        ({"moe_router_score_function": "sigmoid", "moe_router_enable_expert_bias": True}, "expert bias"),
        ({"moe_shared_expert_intermediate_size": 64}, "shared expert"),
        ({"moe_layer_freq": 2}, "dense layers"),
        ({"moe_router_topk": 1, "moe_router_pre_softmax": True}, "pre-softmax routing"),
    ],
)
def test_moe_train_refuses_what_mixtral_cannot_express(overrides: dict, named: str):
    from mai_models.bench.moe_train import run

    with pytest.raises(MaiUserError, match=named) as err:
        run(preset="tiny", steps=1, warmup=0, model_overrides=overrides)
    assert "\n" not in str(err.value)


def test_moe_train_refuses_a_preset_with_z_loss():
    from mai_models.bench.moe_train import run

    with pytest.raises(MaiUserError, match="z-loss"):
        run(preset="mai-1-like")
    with pytest.raises(MaiUserError, match="pre-softmax routing .*; no a shared expert"):
        run(preset="demo")
