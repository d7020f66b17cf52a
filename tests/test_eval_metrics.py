"""Evaluation metrics: n-gram baseline, bits per byte, HF and Megatron-style scoring adapters, local
lm-eval tasks through the ``mai`` adapter, and the TTS metrics (MCD, F0, DNSMOS, WER)."""

from __future__ import annotations

import math
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mai_models.eval.lm_metrics import bits_per_byte, document_nll, generation_samples
from mai_models.eval.ngram import NGramLM, frame_documents, train_ngram
from mai_models.eval.scoring import (
    GenerativeModel,
    HFScoringModel,
    MegatronScoringModel,
    ScoringModel,
    sliding_windows,
)
from mai_models.tokenizer.bpe import EOD_ID, EOD_TOKEN, SPECIAL_TOKENS

HAVE_FLITE = shutil.which("flite") is not None
HF_WINDOW = 64  # small on purpose: held-out documents are longer, so sliding windows are exercised


# ---------------------------------------------------------------- shared text fixtures
@pytest.fixture(scope="session")
def corpus() -> dict[str, list[str]]:
    """Real English from the embedded demo corpus: most documents to train, a few held out."""
    from mai_models.data.demo_corpus import iter_demo_documents

    docs = [r.text for r in iter_demo_documents(limit_bytes=250_000)]
    return {"train": docs[:-12], "heldout": docs[-12:]}


@pytest.fixture(scope="session")
def tokenizer(corpus: dict[str, list[str]]):
    """Byte-level BPE with our special tokens (EOD first, id 0), trained in about a second."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus["train"], trainer=trainer)
    assert tok.token_to_id(EOD_TOKEN) == EOD_ID
    tok.encode_special_tokens = True
    return tok


@pytest.fixture(scope="session")
def ngram(corpus: dict[str, list[str]], tokenizer) -> NGramLM:
    return train_ngram(frame_documents(tokenizer, corpus["train"]), order=3, tokenizer=tokenizer)


@pytest.fixture(scope="session")
def ngram_file(ngram: NGramLM, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ngram.save(tmp_path_factory.mktemp("ngram") / "baseline.npz")


@pytest.fixture(scope="session")
def hf_dir(tokenizer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny randomly initialised GPT-2 with our tokenizer, saved in the HF layout."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("hf") / "tiny-gpt2"
    config = GPT2Config(
        vocab_size=tokenizer.get_vocab_size(),
        n_positions=HF_WINDOW,
        n_embd=32,
        n_layer=2,
        n_head=2,
        bos_token_id=EOD_ID,
        eos_token_id=EOD_ID,
    )
    GPT2LMHeadModel(config).save_pretrained(out)
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=EOD_TOKEN).save_pretrained(out)
    return out


def _shuffle_words(text: str, seed: int) -> str:
    words = text.split()
    random.Random(seed).shuffle(words)
    return " ".join(words)


# ---------------------------------------------------------------- n-gram baseline
def test_ngram_prefers_real_text_and_is_a_distribution(ngram: NGramLM, corpus: dict[str, list[str]]) -> None:
    heldout = corpus["heldout"]
    real = bits_per_byte(ngram, heldout)
    shuffled = bits_per_byte(ngram, [_shuffle_words(t, i) for i, t in enumerate(heldout)])
    assert 0.5 < real["bpb"] < shuffled["bpb"]
    assert real["tokens"] > real["docs"] == len(heldout)

    # Kneser-Ney interpolated down to uniform: every history yields a proper distribution, and
    # token_logprobs reads exactly from it.
    ids = frame_documents(ngram.tokenizer, heldout[:1])[0][:40]
    for history in ([], ids[:1], ids[5:7], [ngram.vocab_size - 1, ngram.vocab_size - 2]):
        assert ngram.next_distribution(history).sum() == pytest.approx(1.0, abs=1e-9)
    expected = [math.log(ngram.next_distribution(ids[max(0, i - 2) : i])[ids[i]]) for i in range(1, len(ids))]
    np.testing.assert_allclose(ngram.token_logprobs(ids), expected, rtol=1e-9)


def test_ngram_unseen_tokens_are_finite_and_save_load_round_trips(ngram: NGramLM, ngram_file: Path) -> None:
    toy = train_ngram([[0, 1, 2, 1, 2, 0]], order=3, vocab_size=10)
    logprobs = toy.token_logprobs([0, 9, 8, 1])  # 9 and 8 never occur in training
    assert np.isfinite(logprobs).all() and (logprobs < 0).all()
    assert logprobs[0] < toy.token_logprobs([0, 1])[0]  # the seen bigram is likelier

    loaded = NGramLM.load(ngram_file)
    ids = ngram.encode("Return the value of the attribute, or raise an error.")
    np.testing.assert_array_equal(loaded.token_logprobs(ids), ngram.token_logprobs(ids))
    assert loaded.decode(ids) == ngram.decode(ids) and loaded.name == ngram.name
    assert isinstance(loaded, ScoringModel)
    sample = generation_samples(loaded, ["The "], max_new_tokens=8)
    assert sample[0]["prompt"] == "The " and sample[0]["completion"] == ngram.generate(
        "The ", max_new_tokens=8
    )


def test_ngram_generates_with_the_shared_signature(ngram: NGramLM) -> None:
    assert isinstance(ngram, GenerativeModel)
    prompt = ngram.encode_prompt("The ")
    greedy = ngram.generate_ids(prompt, max_new_tokens=12, stop=())
    assert greedy[0] == int(ngram.next_distribution(prompt[-2:]).argmax()) and len(greedy) == 12
    text = ngram.generate("The ", max_new_tokens=12)
    assert (
        text
        == "".join(ngram.stream("The ", max_new_tokens=12))
        == ngram.decode(
            ngram.generate_ids(prompt, max_new_tokens=12)  # ends at the EOD, as in training
        )
    )
    # Seeded sampling repeats; a nucleus that keeps only the likeliest token is greedy.
    sampled = {"max_new_tokens": 12, "stop": (), "temperature": 1.0, "top_p": 0.9}
    draws = [ngram.generate_ids(prompt, **sampled, seed=seed) for seed in (1, 1, 2, 3)]
    assert draws[0] == draws[1] and any(d != draws[0] for d in draws[2:])
    assert ngram.generate_ids(prompt, **{**sampled, "top_p": 1e-9}, seed=5) == greedy


# ---------------------------------------------------------------- bits per byte
class UniformBytes:
    """Every one of 256 byte tokens equally likely: exactly 8 bits per token."""

    name = "uniform-bytes"
    eod_id = 0  # NUL never occurs in text, so it can stand for the document separator

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def token_logprobs(self, ids: list[int]) -> np.ndarray:
        return np.full(len(ids) - 1, -math.log(256.0))


def test_bits_per_byte_of_a_uniform_byte_model_is_eight() -> None:
    texts = ["héllo wörld " * 50, "plain ascii text " * 40]  # multi-byte characters count as bytes
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    result = bits_per_byte(UniformBytes(), texts)
    # One extra scored token per document: the end-of-document separator the model must predict.
    assert result["bytes"] == n_bytes and result["tokens"] == n_bytes + len(texts)
    assert result["bpb"] == pytest.approx(8.0 * (n_bytes + len(texts)) / n_bytes)
    assert abs(result["bpb"] - 8.0) < 0.02
    assert result["perplexity"] == pytest.approx(256.0)
    assert result["nll"] == pytest.approx(result["tokens"] * math.log(256.0))


# ---------------------------------------------------------------- torch adapters
def test_sliding_windows_score_every_target_once() -> None:
    for n, window, stride in [
        (1, 4, None),
        (2, 4, None),
        (10, 4, None),
        (100, 16, 5),
        (64, 64, None),
        (65, 64, 63),
    ]:
        targets = [t for start, end, first in sliding_windows(n, window, stride) for t in range(first, end)]
        assert targets == list(range(1, n))
        for start, end, first in sliding_windows(n, window, stride):
            assert end - start <= window and start < first


def test_hf_and_megatron_adapters_score_alike(hf_dir: Path, corpus: dict[str, list[str]]) -> None:
    import torch

    hf = HFScoringModel(hf_dir)
    assert hf.max_length == HF_WINDOW and hf.eod_id == EOD_ID and isinstance(hf, ScoringModel)
    text = max(corpus["heldout"], key=len)
    ids = [hf.eod_id, *hf.encode(text)][:200]
    assert len(ids) > 2 * HF_WINDOW
    logprobs = hf.token_logprobs(ids)
    assert logprobs.shape == (len(ids) - 1,) and np.isfinite(logprobs).all() and (logprobs <= 0).all()

    # The first window is an ordinary forward pass; a later target is scored with its context window.
    with torch.no_grad():
        full = torch.log_softmax(hf.model(torch.tensor([ids[:HF_WINDOW]])).logits[0].float(), -1)
        later = torch.log_softmax(hf.model(torch.tensor([ids[32:96]])).logits[0].float(), -1)
    first = full[torch.arange(HF_WINDOW - 1), torch.tensor(ids[1:HF_WINDOW])].double().numpy()
    np.testing.assert_allclose(logprobs[: HF_WINDOW - 1], first, atol=1e-5)
    assert logprobs[80 - 1] == pytest.approx(float(later[80 - 32 - 1, ids[80]]), abs=1e-5)

    # A random model is close to uniform: per-token perplexity near the vocabulary size.
    result = bits_per_byte(hf, corpus["heldout"][:2])
    vocab = hf.model.config.vocab_size
    assert 0.7 * vocab < result["perplexity"] < 1.3 * vocab

    class TinyMegatronLike:
        """The MegatronLM surface (tokenizer + logits over [B, T] ids) around the same weights."""

        tokenizer = hf.tokenizer.backend_tokenizer
        seq_length = HF_WINDOW

        def logits(self, token_ids: torch.Tensor) -> torch.Tensor:
            return hf.model(input_ids=token_ids).logits

    mega = MegatronScoringModel(TinyMegatronLike())
    assert mega.max_length == HF_WINDOW and mega.eod_id == EOD_ID
    assert mega.encode(text[:300]) == hf.encode(text[:300])
    np.testing.assert_allclose(mega.token_logprobs(ids), logprobs, atol=1e-6)
    assert document_nll(mega, text[:300]) == pytest.approx(document_nll(hf, text[:300]), rel=1e-6)
    # Same weights, same greedy text; the stop string is cut off, as the server cuts it.
    whole = hf.generate("The ", max_new_tokens=12)
    assert mega.generate("The ", max_new_tokens=12) == whole and isinstance(mega, GenerativeModel)
    stop = whole[3:6]
    assert (
        len(stop) == 3 and hf.generate("The ", max_new_tokens=12, stop=[stop]) == whole[: whole.index(stop)]
    )


# ---------------------------------------------------------------- lm-eval local tasks
def test_local_lm_eval_tasks_run_with_the_mai_adapter(
    ngram: NGramLM, ngram_file: Path, corpus: dict[str, list[str]], tmp_path: Path
) -> None:
    from mai_models.eval.lm_tasks import CLOZE_TASK, PPL_TASK, build_local_tasks, cloze_items, run_lm_eval

    heldout = corpus["heldout"]
    items = cloze_items(heldout, context_words=16, continuation_words=6, distractors=3)
    assert all(0 <= i["label"] < len(i["choices"]) <= 4 for i in items)
    assert all(heldout[i["doc_id"]].startswith(i["context"]) for i in items)

    info = build_local_tasks(heldout, tmp_path / "tasks", context_words=16, continuation_words=6)
    assert (tmp_path / "tasks" / f"{CLOZE_TASK}.yaml").is_file() and info["cloze_items"] >= 6
    results = run_lm_eval({"ngram": str(ngram_file)}, tmp_path / "tasks", limit=6)
    cloze, ppl = results[CLOZE_TASK], results[PPL_TASK]
    assert 0.0 <= cloze["acc"] <= 1.0 and 0.0 <= cloze["acc_norm"] <= 1.0 and cloze["samples"] == 6

    # lm-eval's rolling bits per byte is ours without the trailing separator (lm-eval scores the
    # text after an EOD prefix, nothing after it): check the adapter against a direct computation.
    docs = [t for t in heldout if t.strip()][:6]
    nll = -sum(float(ngram.token_logprobs([EOD_ID, *ngram.encode(t)]).sum()) for t in docs)
    direct = nll / (sum(len(t.encode("utf-8")) for t in docs) * math.log(2))
    assert ppl["bits_per_byte"] == pytest.approx(direct, rel=1e-9)


# ---------------------------------------------------------------- TTS metrics
def _harmonic(f0: float, sr: int, seconds: float = 1.2) -> np.ndarray:
    """A voiced vowel-like tone: harmonics under a fixed two-formant envelope, gentle vibrato-free."""
    t = np.arange(int(sr * seconds)) / sr
    wave = np.zeros_like(t)
    for k in range(1, int(4000 / f0)):
        freq = k * f0
        gain = np.exp(-(((freq - 700) / 300) ** 2)) + 0.6 * np.exp(-(((freq - 1200) / 400) ** 2)) + 0.05
        wave += gain * np.sin(2 * np.pi * freq * t)
    return (0.3 * wave / np.abs(wave).max()).astype(np.float32)


@pytest.fixture(scope="module")
def flite_clips() -> dict[str, tuple[np.ndarray, int]]:
    if not HAVE_FLITE:
        pytest.skip("flite not installed")
    from mai_models.tts.teacher import FliteTeacher

    text = "The birch canoe slid on the smooth planks."
    return {voice: FliteTeacher(voice).synthesize(text) for voice in ("slt", "kal16")}


def test_mcd_is_zero_on_itself_and_positive_across_voices(flite_clips) -> None:
    from mai_models.eval.tts_metrics import mcd_dtw

    slt, kal = flite_clips["slt"], flite_clips["kal16"]
    assert mcd_dtw(*slt, *slt) == pytest.approx(0.0, abs=1e-6)
    assert mcd_dtw(*slt, *kal) > 4.0


def test_mcd_and_f0_on_harmonic_signals_at_different_rates() -> None:
    from mai_models.eval.tts_metrics import compare_audio, f0_rmse, mcd_dtw

    ref = _harmonic(150.0, 16000)
    assert mcd_dtw(ref, 16000, ref, 16000) == pytest.approx(0.0, abs=1e-6)
    # The shifted clip arrives at 22.05 kHz: both are analysed at 16 kHz (matched bandwidth).
    shifted = _harmonic(170.0, 22050)
    assert f0_rmse(ref, 16000, shifted, 22050) == pytest.approx(20.0, abs=3.0)
    scores = compare_audio(ref, 16000, shifted, 22050)
    assert scores["analysis_rate"] == 16000 and scores["voiced_pairs"] > 100
    assert scores["f0_rmse_cents"] == pytest.approx(1200 * math.log2(170 / 150), abs=40)
    assert scores["mcd_db"] > 0.0


def test_the_install_warm_up_leaves_librosas_dtw_compiled_in_numbas_cache(tmp_path: Path) -> None:
    code = "from mai_models.eval.tts_metrics import warm_analysis_cache; warm_analysis_cache()"
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=300)
    compiled = {p.name.split("-")[0] for p in tmp_path.rglob("*.nbi")}
    assert {"sequence.__dtw_calc_accu_cost", "sequence.__dtw_backtracking"} <= compiled


def test_dnsmos_scores_speech() -> None:
    from mai_models.eval.tts_metrics import dnsmos

    scores = dnsmos(_harmonic(140.0, 22050, seconds=2.0), 22050)
    assert set(scores) == {"sig", "bak", "ovrl", "p808"}
    assert all(0.5 < v < 5.5 for v in scores.values())


@pytest.mark.slow  # ~15 s alone, up to 35 s on a busy 2-core machine (ASR, DNSMOS, WORLD per utterance)
@pytest.mark.skipif(not HAVE_FLITE, reason="flite not installed (espeak speech defeats pocketsphinx WER)")
def test_evaluate_systems_with_the_teacher_as_its_own_reference(tmp_path: Path) -> None:
    from mai_models.eval.tts_metrics import evaluate_systems, load_references
    from mai_models.tts.audio import write_wav
    from mai_models.tts.teacher import FliteTeacher

    teacher = FliteTeacher("slt")
    # Sentences pocketsphinx hears well in flite's slt voice (WER 0 and 0.11 measured).
    sentences = ["The boy was there when the sun rose.", "A large size in stockings is hard to sell."]
    (tmp_path / "wavs").mkdir()
    for i, text in enumerate(sentences):
        write_wav(tmp_path / "wavs" / f"h{i}.wav", *teacher.synthesize(text))
    (tmp_path / "metadata.csv").write_text("".join(f"h{i}|{t}|{t}\n" for i, t in enumerate(sentences)))
    refs = load_references(tmp_path)

    # Scored by two worker processes.
    frame, summaries = evaluate_systems({"slt": teacher.synthesize}, refs, workers=2)
    summary = summaries["slt"]
    assert len(frame) == 2 and summary["utterances"] == 2 and set(frame["system"]) == {"slt"}
    for column in ("seconds", "synth_seconds", "rtf", "mcd_db", "f0_rmse_hz", "wer", "cer", "dnsmos_ovrl"):
        assert column in frame and frame[column].notna().all()
    assert frame["mcd_db"].max() < 0.5  # PCM16 rounding of the reference is the only difference
    assert summary["wer"] <= 0.2 and 0 <= summary["cer"] <= summary["wer"] + 0.1
    assert summary["rtf"] > 0 and 1.0 < summary["mean_dnsmos_ovrl"] < 5.0

    # Another voice against the same references, scored in this process: worse MCD than the teacher,
    # whose scores are the ones the worker processes gave (flite speaks the same samples every time).
    both, summaries = evaluate_systems(
        {"kal16": FliteTeacher("kal16").synthesize, "teacher:flite-slt": teacher.synthesize},
        refs,
        with_dnsmos=False,
        workers=1,
    )
    assert set(both["system"]) == {"kal16", "teacher:flite-slt"} and len(both) == 4
    again = summaries["teacher:flite-slt"]
    assert (again["wer"], again["cer"]) == (summary["wer"], summary["cer"])
    assert again["mean_mcd_db"] == pytest.approx(summary["mean_mcd_db"])
    assert summaries["kal16"]["mean_mcd_db"] > summaries["teacher:flite-slt"]["mean_mcd_db"] + 2.0
