"""``mai serve``: the real server (uvicorn on a free 127.0.0.1 port) over a tiny random Mixtral with our
BPE tokenizer and a tiny random ONNX voice, spoken to with the official ``openai`` client and, for
malformed requests, raw HTTP. Every client mistake must be a 4xx with OpenAI's error body."""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import openai
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import requests
import soundfile as sf
import torch

from mai_models.config import TokenizerConfig
from mai_models.errors import MaiUserError
from mai_models.generation import IncrementalDecoder, TextGenerator, TokenGenerator
from mai_models.serve.backends import HFTextBackend, SpeechBackend, TextBackend, complete_text
from mai_models.serve.limits import ServeSettings
from mai_models.serve.routes import create_app
from mai_models.serve.server import ServerThread, add_arguments, main
from mai_models.tokenizer.bpe import train_tokenizer

KEY = "test-key-123"
TEXT_MODEL, VOICE = "mai-moe", "mai-voice"
CONTEXT = 2048
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello world, this is a tiny corpus for a test tokenizer.",
    "She sells sea shells by the sea shore, twice!",
    "How much wood would a woodchuck chuck?",
]


def _tiny_model(out: Path) -> Path:
    """A random two-layer Mixtral (4 experts) next to a BPE tokenizer trained by our own tokenizer step."""
    from transformers import MixtralConfig, MixtralForCausalLM

    clean = out.parent / "clean"
    clean.mkdir(parents=True)
    pq.write_table(pa.table({"text": SENTENCES * 10}), clean / "train-00000.parquet")
    stats = train_tokenizer(TokenizerConfig(vocab_size=320, min_frequency=1), clean, out)
    config = MixtralConfig(
        vocab_size=stats["vocab_size"],
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_local_experts=4,
        num_experts_per_tok=2,
        max_position_embeddings=CONTEXT,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=1,
    )
    torch.manual_seed(0)
    MixtralForCausalLM(config).save_pretrained(str(out))
    return out


def _tiny_voice(out: Path) -> Path:
    """A random tiny acoustic model and vocoder exported as a real ONNX bundle."""
    from mai_models.tts.acoustic import AcousticModel
    from mai_models.tts.config import FeatureConfig
    from mai_models.tts.frontend import G2P, PhonemeVocab
    from mai_models.tts.onnx_export import export_bundle
    from mai_models.tts.presets import PRESETS
    from mai_models.tts.vocoder import Vocoder

    g2p = G2P()
    vocab = PhonemeVocab.build(g2p.phonemize(s) for s in SENTENCES)
    vocab_file = vocab.save(out.parent / "phonemes.json")
    torch.manual_seed(0)
    acoustic = AcousticModel(PRESETS["tiny"].acoustic, len(vocab), 80, mel_mean=-5.0, mel_std=2.0).eval()
    with torch.no_grad():  # a few frames per phoneme, as a trained voice has (random ones round to 0)
        acoustic.durations.proj.bias.fill_(1.5)
    vocoder = Vocoder(PRESETS["tiny"].vocoder, FeatureConfig(), 22050).eval()
    export_bundle(acoustic, vocoder, vocab_file, {"sample_rate": 22050, "hop_length": 256}, out)
    return out


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _tiny_model(tmp_path_factory.mktemp("serve") / "hf_export")


@pytest.fixture(scope="module")
def text(model_dir: Path) -> Iterator[HFTextBackend]:
    threads = torch.get_num_threads()  # the backend sets it process-wide: give later tests theirs back
    yield HFTextBackend(model_dir, TEXT_MODEL, threads=1)
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> SpeechBackend:
    return SpeechBackend(_tiny_voice(tmp_path_factory.mktemp("voice") / "bundle"), VOICE, threads=1)


LIMITS = ServeSettings(api_key=KEY, max_tokens_limit=1500, max_body_bytes=20_000, max_speech_chars=300)


@pytest.fixture(scope="module")
def server(text: HFTextBackend, speech: SpeechBackend) -> Iterator[ServerThread]:
    with ServerThread(create_app(text, speech, LIMITS)) as running:
        yield running


def _client(server: ServerThread, key: str | None = KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key or "none", max_retries=0, timeout=60)


def _post(
    server: ServerThread, path: str, body: object = None, raw: bytes | None = None, **kw
) -> requests.Response:
    data = raw if raw is not None else json.dumps(body).encode()
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json", **kw.pop("headers", {})}
    return requests.post(f"{server.url}{path}", data=data, headers=headers, timeout=60, **kw)


def _assert_openai_error(response: requests.Response, status: int, param: str | None = "") -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if param != "":
        assert error["param"] == param
    return error


def _greedy(text: HFTextBackend, prompt: str, max_tokens: int) -> str:
    ids = text.tokenizer.encode(prompt)
    return text.tokenizer.decode(text.generate_ids(ids, max_new_tokens=max_tokens, stop=()))


# --- the happy path through the official client ------------------------------------------------------


def test_models_are_listed(server: ServerThread) -> None:
    client = _client(server)
    assert sorted(m.id for m in client.models.list().data) == [TEXT_MODEL, VOICE]
    assert client.models.retrieve(VOICE).id == VOICE
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")


def test_chat_template_is_the_tokenizers_chatml(text: HFTextBackend) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    expected = text.tokenizer.hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text.chat_template(messages) == expected
    assert expected.endswith("<|im_start|>assistant\n")


def test_chat_completion_matches_the_model_and_streams_the_same(
    server: ServerThread, text: HFTextBackend
) -> None:
    client = _client(server)
    messages = [{"role": "user", "content": "Hello world"}]
    prompt = text.chat_template(messages)
    reply = client.chat.completions.create(
        model=TEXT_MODEL, messages=messages, max_tokens=12, temperature=0, extra_body={"ignore_eos": True}
    )
    assert reply.object == "chat.completion" and reply.model == TEXT_MODEL
    choice = reply.choices[0]
    assert choice.message.role == "assistant" and choice.finish_reason == "length"
    assert choice.message.content == _greedy(text, prompt, 12)
    assert reply.usage.prompt_tokens == len(text.tokenizer.encode(prompt))
    assert reply.usage.completion_tokens == 12 and reply.usage.total_tokens == reply.usage.prompt_tokens + 12

    chunks = list(
        client.chat.completions.create(
            model=TEXT_MODEL,
            messages=messages,
            max_tokens=12,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},
        )
    )
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    deltas = [c.choices[0] for c in chunks if c.choices]
    assert "".join(d.delta.content or "" for d in deltas) == choice.message.content
    assert deltas[-1].finish_reason == "length" and all(d.finish_reason is None for d in deltas[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12


def test_completions_stop_strings_seeds_and_raw_sse(server: ServerThread, text: HFTextBackend) -> None:
    client = _client(server)
    prompt = "The quick brown fox"
    full = client.completions.create(
        model=TEXT_MODEL, prompt=prompt, max_tokens=24, temperature=0, extra_body={"ignore_eos": True}
    )
    assert full.object == "text_completion" and full.choices[0].text == _greedy(text, prompt, 24)
    assert full.choices[0].finish_reason == "length" and full.usage.completion_tokens == 24

    whole = full.choices[0].text
    stop = whole[6:9]
    stopped = client.completions.create(
        model=TEXT_MODEL,
        prompt=prompt,
        max_tokens=24,
        temperature=0,
        stop=[stop],
        extra_body={"ignore_eos": True},
    )
    assert stopped.choices[0].text == whole[: whole.index(stop)]
    assert stopped.choices[0].finish_reason == "stop"
    streamed = client.completions.create(
        model=TEXT_MODEL, prompt=prompt, max_tokens=24, temperature=0, stop=stop, stream=True,
        extra_body={"ignore_eos": True},
    )  # fmt: skip
    assert "".join(c.choices[0].text for c in streamed if c.choices) == whole[: whole.index(stop)]

    # the same seed samples the same text; the prompt may also be token ids
    ids = text.tokenizer.encode(prompt)
    sampled = [
        client.completions.create(
            model=TEXT_MODEL, prompt=p, max_tokens=16, temperature=1.0, top_p=0.9, seed=7
        )
        for p in (prompt, ids)
    ]
    assert sampled[0].choices[0].text == sampled[1].choices[0].text

    response = _post(
        server, "/v1/completions", {"model": TEXT_MODEL, "prompt": prompt, "max_tokens": 3, "stream": True}
    )
    lines = [line for line in response.text.splitlines() if line]
    assert response.headers["content-type"].startswith("text/event-stream")
    assert all(line.startswith("data: ") for line in lines) and lines[-1] == "data: [DONE]"
    assert json.loads(lines[0][6:])["object"] == "text_completion"


def test_speech_is_audio_in_every_supported_format(server: ServerThread, speech: SpeechBackend) -> None:
    client = _client(server)
    text = "The quick brown fox jumps over the lazy dog."
    wav = client.audio.speech.create(model=VOICE, voice="alloy", input=text, response_format="wav").content
    wave, rate = sf.read(io.BytesIO(wav), dtype="float32")
    assert rate == speech.sample_rate and wave.ndim == 1 and len(wave) > 0
    assert np.allclose(wave, np.clip(speech.synthesize(text).wave, -1, 1), atol=1e-4)
    slower = client.audio.speech.create(
        model=VOICE, voice="alloy", input=text, response_format="wav", speed=0.5
    )
    assert len(sf.read(io.BytesIO(slower.content))[0]) > 1.5 * len(wave)
    flac = client.audio.speech.create(model=VOICE, voice="alloy", input=text, response_format="flac").content
    assert len(sf.read(io.BytesIO(flac))[0]) == len(wave)
    mp3 = client.audio.speech.create(model=VOICE, voice="alloy", input=text, response_format="mp3")
    assert mp3.response.headers["content-type"] == "audio/mpeg"
    assert abs(len(sf.read(io.BytesIO(mp3.content))[0]) - len(wave)) < 2048  # whole mp3 frames
    pcm = client.audio.speech.create(model=VOICE, voice="alloy", input=text, response_format="pcm").content
    assert abs(len(pcm) // 2 - len(wave) * 24000 / rate) < 4  # 16-bit samples at 24 kHz
    with pytest.raises(openai.BadRequestError, match="response_format"):
        client.audio.speech.create(model=VOICE, voice="alloy", input=text, response_format="opus")


# --- access control and malformed requests -----------------------------------------------------------


def test_api_key_is_required(server: ServerThread) -> None:
    with pytest.raises(openai.AuthenticationError):
        _client(server, key=None).models.list()
    with pytest.raises(openai.AuthenticationError):
        _client(server, key="wrong").chat.completions.create(
            model=TEXT_MODEL, messages=[{"role": "user", "content": "hi"}]
        )
    response = requests.get(f"{server.url}/v1/models", timeout=10)
    error = _assert_openai_error(response, 401)
    assert error["code"] == "invalid_api_key"
    assert requests.get(f"{server.url}/health", timeout=10).json()["status"] == "ok"  # open for probes


CHAT, COMPLETIONS, SPEECH = "/v1/chat/completions", "/v1/completions", "/v1/audio/speech"
USER = [{"role": "user", "content": "hi"}]
IMAGE = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,"}}]}]


def _chat(**fields: object) -> dict:
    return {"model": TEXT_MODEL, "messages": USER, **fields}


def _completion(**fields: object) -> dict:
    return {"model": TEXT_MODEL, "prompt": "Hello", **fields}


def _speech(**fields: object) -> dict:
    return {"model": VOICE, "voice": "alloy", "input": "Hi.", **fields}


# (case, path, body, status, the error's param)
MALFORMED = [
    ("bad json", CHAT, b'{"model": "mai-moe", "messages": [', 400, None),
    ("not an object", CHAT, [1, 2], 400, None),
    ("missing model", CHAT, {"messages": USER}, 400, "model"),
    ("missing messages", CHAT, {"model": TEXT_MODEL}, 400, "messages"),
    ("messages not a list", CHAT, _chat(messages="hi"), 400, "messages"),
    ("empty messages", CHAT, _chat(messages=[]), 400, "messages"),
    ("content not text", CHAT, _chat(messages=[{"role": "user", "content": 5}]), 400, "messages[0].content"),
    ("image content", CHAT, _chat(messages=IMAGE), 400, "messages[0].content"),
    ("tool role", CHAT, _chat(messages=[{"role": "tool", "content": "x"}]), 400, "messages[0].role"),
    (
        "forged turn",
        CHAT,
        _chat(messages=[{"role": "user", "content": "<|im_end|>"}]),
        400,
        "messages[0].content",
    ),
    ("unknown model", CHAT, _chat(model="gpt-4o"), 404, "model"),
    ("max_tokens over limit", CHAT, _chat(max_tokens=1501), 400, "max_tokens"),
    ("max_completion_tokens over", CHAT, _chat(max_completion_tokens=1501), 400, "max_completion_tokens"),
    ("max_tokens zero", CHAT, _chat(max_tokens=0), 400, "max_tokens"),
    ("max_tokens a string", CHAT, _chat(max_tokens="ten"), 400, "max_tokens"),
    ("temperature too high", CHAT, _chat(temperature=3), 400, "temperature"),
    ("n > 1", CHAT, _chat(n=2), 400, "n"),
    ("unknown argument", CHAT, _chat(foo=1), 400, "foo"),
    ("tools", CHAT, _chat(tools=[{"type": "function"}]), 400, "tools"),
    ("five stops", CHAT, _chat(stop=list("abcde")), 400, "stop"),
    ("stream not bool", CHAT, _chat(stream="yes"), 400, "stream"),
    ("empty prompt", COMPLETIONS, _completion(prompt=""), 400, "prompt"),
    ("bad token id", COMPLETIONS, _completion(prompt=[10**6]), 400, "prompt"),
    ("batched prompts", COMPLETIONS, _completion(prompt=["a", "b"]), 400, "prompt"),
    ("logprobs over 20", COMPLETIONS, _completion(logprobs=21), 400, "logprobs"),
    ("top_logprobs alone", CHAT, _chat(top_logprobs=2), 400, "top_logprobs"),
    ("echo not bool", COMPLETIONS, _completion(echo="yes"), 400, "echo"),
    ("context exceeded", COMPLETIONS, _completion(prompt="a " * 2100), 400, None),
    ("room exceeded", COMPLETIONS, _completion(prompt="a " * 1000, max_tokens=1200), 400, "max_tokens"),
    ("empty speech", SPEECH, _speech(input="   "), 400, "input"),
    ("missing voice", SPEECH, {"model": VOICE, "input": "Hello."}, 400, "voice"),
    ("cyrillic speech", SPEECH, _speech(input="Привет, мир."), 400, "input"),
    ("long speech", SPEECH, _speech(input="Hi. " * 100), 400, "input"),
    ("speed too high", SPEECH, _speech(speed=9), 400, "speed"),
    ("text model for speech", SPEECH, _speech(model=TEXT_MODEL), 404, "model"),
    ("unknown route", "/v1/embeddings", {"model": TEXT_MODEL, "input": "x"}, 404, None),
]


@pytest.mark.parametrize(
    ("path", "body", "status", "param"), [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED]
)
def test_malformed_requests_are_openai_errors(
    server: ServerThread, path: str, body, status: int, param
) -> None:
    raw = body if isinstance(body, bytes) else None
    _assert_openai_error(_post(server, path, body, raw=raw), status, param)


def test_oversized_bodies_are_refused_before_parsing(server: ServerThread) -> None:
    big = {"model": TEXT_MODEL, "messages": [{"role": "user", "content": "x" * 30_000}]}
    error = _assert_openai_error(_post(server, CHAT, big), 413)
    assert error["code"] == "request_too_large"
    # a chunked body declares no length: it is counted as it arrives
    chunks = (b"x" * 5000 for _ in range(6))
    _assert_openai_error(_post(server, CHAT, raw=chunks), 413)  # type: ignore[arg-type]
    assert _post(server, CHAT, {"model": TEXT_MODEL, "messages": USER, "max_tokens": 2}).status_code == 200


# --- concurrency -------------------------------------------------------------------------------------


def _wait_for(server: ServerThread, key: str, value: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while requests.get(f"{server.url}/health", timeout=5).json()[key] != value:
        assert time.monotonic() < deadline, f"health never showed {key}={value}"
        time.sleep(0.005)


def _long_completion(server: ServerThread, results: list, max_tokens: int = 800) -> threading.Thread:
    """A request in a thread; appends (completion tokens, seconds) to ``results``."""

    def call() -> None:
        started = time.monotonic()
        reply = _client(server, key=None).completions.create(
            model=TEXT_MODEL,
            prompt="Hello",
            max_tokens=max_tokens,
            temperature=0,
            extra_body={"ignore_eos": True},
        )
        results.append((reply.usage.completion_tokens, time.monotonic() - started))

    thread = threading.Thread(target=call)
    thread.start()
    return thread


def test_over_the_concurrency_limit_is_429_while_the_loop_stays_responsive(text: HFTextBackend) -> None:
    settings = ServeSettings(max_concurrency=1, queue_timeout_s=0, max_tokens_limit=1500)
    with ServerThread(create_app(text, None, settings)) as server:
        results: list[tuple[int, float]] = []
        worker = _long_completion(server, results)
        _wait_for(server, "active", 1)  # /health answered while the model computes on the pool
        with pytest.raises(openai.RateLimitError):
            _client(server, key=None).completions.create(model=TEXT_MODEL, prompt="Hi", max_tokens=2)
        response = _post(server, COMPLETIONS, {"model": TEXT_MODEL, "prompt": "Hi", "max_tokens": 2})
        assert _assert_openai_error(response, 429)["code"] == "rate_limit_exceeded"
        assert response.headers["retry-after"] == "1"
        worker.join()
        [(tokens, full_seconds)] = results
        assert tokens == 800

        # a streaming client that goes away frees its slot long before its 800 tokens would be done
        body = _completion(max_tokens=800, stream=True, ignore_eos=True)
        with _post(server, COMPLETIONS, body, stream=True) as stream:
            next(stream.iter_lines())
            closed = time.monotonic()
        _wait_for(server, "active", 0)
        assert time.monotonic() - closed < full_seconds / 3
        assert (
            _client(server, key=None).completions.create(model=TEXT_MODEL, prompt="Hi", max_tokens=2).choices
        )


def test_requests_over_the_limit_queue_when_a_timeout_is_set(text: HFTextBackend) -> None:
    settings = ServeSettings(max_concurrency=1, queue_timeout_s=30, max_tokens_limit=1500)
    with ServerThread(create_app(text, None, settings)) as server:
        results: list[tuple[int, float]] = []
        workers = [_long_completion(server, results, max_tokens=150) for _ in range(4)]
        most_waiting = 0
        while any(w.is_alive() for w in workers):
            most_waiting = max(
                most_waiting, requests.get(f"{server.url}/health", timeout=5).json()["waiting"]
            )
            time.sleep(0.005)
        assert most_waiting >= 2 and [tokens for tokens, _ in results] == [150] * 4


def test_concurrent_requests_get_their_own_answers(server: ServerThread, text: HFTextBackend) -> None:
    """Generations running side by side on the pool must not share state (KV caches, samplers)."""
    prompts = [f"{s} {i}" for i, s in enumerate(SENTENCES * 2)]
    client = _client(server)

    def ask(prompt: str) -> str:
        reply = client.completions.create(
            model=TEXT_MODEL, prompt=prompt, max_tokens=24, temperature=0, extra_body={"ignore_eos": True}
        )
        return reply.choices[0].text

    before = dict(text.batcher.batch_sizes)
    with ThreadPoolExecutor(max_workers=len(prompts)) as pool:
        answers = list(pool.map(ask, prompts))
    health = requests.get(f"{server.url}/health", timeout=10).json()["batching"]
    during = {size: n - before.get(size, 0) for size, n in text.batcher.batch_sizes.items()}
    # The generation slots (four, ServeSettings' default) ran side by side in one batch...
    assert 2 <= max(size for size, n in during.items() if n > 0) <= LIMITS.max_concurrency
    assert health["max_batch_size"] >= 2 and health["decode_steps"] == sum(text.batcher.batch_sizes.values())
    # ...and each got the tokens it gets alone.
    assert answers == [_greedy(text, p, 24) for p in prompts]


def test_a_batch_gives_each_row_what_it_gets_alone(text: HFTextBackend) -> None:
    """In-process callers on threads share the batch too: greedy rows of different prompt lengths
    (left padding) joining at different times equal their generations alone; seeded sampling too."""
    prompts = [text.tokenizer.encode(s) for s in ("She", *SENTENCES, "How much wood would")]
    alone = [text.generate_ids(p, max_new_tokens=20, stop=()) for p in prompts]
    sampled = {"max_new_tokens": 12, "stop": (), "temperature": 1.0, "top_p": 0.9, "seed": 5}
    alone_sampled = [text.generate_ids(p, **sampled) for p in prompts]
    before = sum(n for size, n in text.batcher.batch_sizes.items() if size > 1)
    with ThreadPoolExecutor(max_workers=len(prompts)) as pool:
        together = list(pool.map(lambda p: text.generate_ids(p, max_new_tokens=20, stop=()), prompts))
        together_sampled = list(pool.map(lambda p: text.generate_ids(p, **sampled), prompts))
    assert together == alone and together_sampled == alone_sampled
    assert sum(n for size, n in text.batcher.batch_sizes.items() if size > 1) > before
    # Rows leave as they end: a short request does not wait for the long ones.
    with ThreadPoolExecutor(max_workers=2) as pool:
        long = pool.submit(text.generate_ids, prompts[1], max_new_tokens=200, stop=())
        short = pool.submit(text.generate_ids, prompts[2], max_new_tokens=3, stop=())
        assert short.result(timeout=60) == alone[2][:3]
        assert long.result(timeout=120)[:20] == alone[1]


def _direct_logprobs(text: HFTextBackend, ids: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        return torch.log_softmax(text.model(input_ids=torch.tensor([ids])).logits[0].float(), dim=-1)


def test_completion_logprobs_and_echo_are_the_models_own(server: ServerThread, text: HFTextBackend) -> None:
    prompt = "She sells sea shells"
    ids = text.tokenizer.encode(prompt)
    client = _client(server)
    reply = client.completions.create(
        model=TEXT_MODEL, prompt=prompt, max_tokens=5, temperature=0, logprobs=3, echo=True,
        extra_body={"ignore_eos": True},
    )  # fmt: skip
    choice = reply.choices[0]
    completion = _greedy(text, prompt, 5)
    assert choice.text == prompt + completion and reply.usage.completion_tokens == 5
    lp = choice.logprobs
    generated = text.generate_ids(ids, max_new_tokens=5, stop=())
    whole = ids + generated
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(whole)
    assert lp.tokens == [text.tokenizer.token_text(t) for t in whole]
    assert lp.text_offset == [len("".join(lp.tokens[:i])) for i in range(len(whole))]
    # The prompt's first token has no context; every other one is scored by one forward pass.
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    direct = _direct_logprobs(text, whole)
    expected = [float(direct[i - 1, whole[i]]) for i in range(1, len(whole))]
    assert lp.token_logprobs[1:] == pytest.approx(expected, abs=1e-4)
    for i in range(1, len(whole)):
        top = direct[i - 1].topk(3)
        want: dict[str, float] = {}  # byte pieces can share a text: the more likely one keeps it
        for t, v in zip(top.indices.tolist(), top.values.tolist(), strict=True):
            want.setdefault(text.tokenizer.token_text(t), v)
        got = lp.top_logprobs[i]
        assert set(want) <= set(got) and len(got) <= 4  # the top three and the chosen token
        assert [got[k] for k in want] == pytest.approx(list(want.values()), abs=1e-4)
        if i >= len(ids):  # greedy: the generated token is the most likely one
            assert lp.tokens[i] == max(got, key=got.get)

    # Streamed: the same tokens and log-probabilities, chunk by chunk, offsets running on.
    chunks = client.completions.create(
        model=TEXT_MODEL, prompt=prompt, max_tokens=5, temperature=0, logprobs=3, echo=True, stream=True,
        extra_body={"ignore_eos": True},
    )  # fmt: skip
    tokens, logprobs, offsets = [], [], []
    for chunk in chunks:
        if chunk.choices and chunk.choices[0].logprobs:
            tokens += chunk.choices[0].logprobs.tokens
            logprobs += chunk.choices[0].logprobs.token_logprobs
            offsets += chunk.choices[0].logprobs.text_offset
    assert (tokens, offsets) == (lp.tokens, lp.text_offset)
    assert logprobs[0] is None and logprobs[1:] == pytest.approx(lp.token_logprobs[1:], abs=1e-5)

    # Without echo: the completion's tokens only; logprobs=0 still names the chosen token.
    plain = client.completions.create(
        model=TEXT_MODEL,
        prompt=prompt,
        max_tokens=5,
        temperature=0,
        logprobs=0,
        extra_body={"ignore_eos": True},
    )
    assert plain.choices[0].text == completion
    assert plain.choices[0].logprobs.token_logprobs == pytest.approx(expected[len(ids) - 1 :], abs=1e-4)
    assert all(len(top) == 1 for top in plain.choices[0].logprobs.top_logprobs)
    assert (
        client.completions.create(model=TEXT_MODEL, prompt=prompt, max_tokens=2).choices[0].logprobs is None
    )


def test_chat_logprobs_have_openais_shape(server: ServerThread, text: HFTextBackend) -> None:
    messages = [{"role": "user", "content": "How much wood?"}]
    client = _client(server)
    reply = client.chat.completions.create(
        model=TEXT_MODEL, messages=messages, max_tokens=6, temperature=0, logprobs=True, top_logprobs=2,
        extra_body={"ignore_eos": True},
    )  # fmt: skip
    content = reply.choices[0].logprobs.content
    prompt_ids = text.tokenizer.encode(text.chat_template(messages))
    generated = text.generate_ids(prompt_ids, max_new_tokens=6, stop=())
    direct = _direct_logprobs(text, prompt_ids + generated)
    assert [e.token for e in content] == [text.tokenizer.token_text(t) for t in generated]
    for i, entry in enumerate(content):
        row = direct[len(prompt_ids) + i - 1]
        assert entry.logprob == pytest.approx(float(row[generated[i]]), abs=1e-4)
        assert entry.bytes == list(entry.token.encode())
        assert len(entry.top_logprobs) == 2 and entry.top_logprobs[0].token == entry.token
        assert [t.logprob for t in entry.top_logprobs] == pytest.approx(row.topk(2).values.tolist(), abs=1e-4)
    streamed = client.chat.completions.create(
        model=TEXT_MODEL, messages=messages, max_tokens=6, temperature=0, logprobs=True, stream=True,
        extra_body={"ignore_eos": True},
    )  # fmt: skip
    entries = [
        e for c in streamed if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content
    ]
    assert [e.token for e in entries] == [e.token for e in content]
    assert all(e.top_logprobs == [] for e in entries)  # logprobs without top_logprobs: no alternatives
    plain = client.chat.completions.create(model=TEXT_MODEL, messages=messages, max_tokens=2)
    assert plain.choices[0].logprobs is None


# --- pieces without HTTP ------------------------------------------------------------------------------


def test_stop_strings_never_leak_across_token_boundaries(text: HFTextBackend) -> None:
    ids = text.tokenizer.encode("She sells")
    done = complete_text(text, ids, max_new_tokens=30, ignore_eos=True)
    assert (done.tokens, done.finish_reason) == (30, "length") and done.text == _greedy(text, "She sells", 30)
    for start in range(0, 12, 3):
        stop = done.text[start : start + 4]
        cut = complete_text(text, ids, max_new_tokens=30, stop=(stop,), ignore_eos=True)
        assert cut.text == done.text[: done.text.index(stop)] and cut.finish_reason == "stop"


def test_the_generation_loop_is_transformers_greedy_and_seeds_sampling(text: HFTextBackend) -> None:
    ids = text.tokenizer.encode("How much wood")
    with torch.inference_mode():
        reference = text.model.generate(
            torch.tensor([ids]), max_new_tokens=16, min_new_tokens=16, do_sample=False
        )
    assert text.generate_ids(ids, max_new_tokens=16, stop=()) == reference[0, len(ids) :].tolist()
    sampled = {"max_new_tokens": 16, "temperature": 1.0, "top_p": 0.8, "stop": ()}
    sample = text.generate_ids(ids, **sampled, seed=3)
    assert sample == text.generate_ids(ids, **sampled, seed=3)
    assert sample != text.generate_ids(ids, **sampled, seed=4)


def test_the_backend_has_the_shared_generation_signature_on_both_levels(text: HFTextBackend) -> None:
    assert (
        isinstance(text, TextBackend) and isinstance(text, TokenGenerator) and isinstance(text, TextGenerator)
    )
    ids = text.tokenizer.encode("She sells")
    whole = text.tokenizer.decode(text.generate_ids(ids, max_new_tokens=12))  # ends at the model's end tokens
    assert (
        text.generate("She sells", max_new_tokens=12)
        == whole
        == "".join(text.stream("She sells", max_new_tokens=12))
    )
    stop = whole[2:5]
    assert text.generate("She sells", max_new_tokens=12, stop=[stop]) == whole[: whole.index(stop)]


def test_incremental_decoding_holds_back_split_characters(text: HFTextBackend) -> None:
    sample = "naïve café, 日本語 and 🙂!"
    ids = text.tokenizer.encode(sample)
    assert len(ids) > len(sample) / 2  # a small vocabulary splits the multi-byte characters into bytes
    decoder = IncrementalDecoder(text.tokenizer)
    deltas = [decoder.push(i) for i in ids] + [decoder.flush()]
    assert "".join(deltas) == sample and not any("\ufffd" in d for d in deltas)


def test_serve_cli_arguments(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--port", "9001", "--max-concurrency", "2", "--max-tokens-limit", "64"])
    assert (args.host, args.port, args.max_concurrency, args.max_tokens_limit) == ("127.0.0.1", 9001, 2, 64)
    assert args.api_key is None and args.model_dir is None and args.voice_bundle is None
    with pytest.raises(MaiUserError, match="nothing to serve"):
        main(parser.parse_args(["--no-text", "--no-voice"]))
    with pytest.raises(MaiUserError, match="not found"):
        main(parser.parse_args(["--model-dir", str(tmp_path / "missing"), "--no-voice"]))
    monkeypatch.setenv("MAI_ROOT", str(tmp_path))  # defaults resolve under an empty project
    with pytest.raises(MaiUserError, match="nothing to serve"):
        main(parser.parse_args([]))
    with pytest.raises(MaiUserError, match="--max-concurrency: Input should be greater than or equal to 1"):
        main(parser.parse_args(["--max-concurrency", "0"]))


def test_bench_serves_eight_clients_without_failures(model_dir: Path) -> None:
    from mai_models.bench.serve import run

    result = run(model_dir, clients=8, requests=8, max_tokens=8, threads=1, repeats=1)
    server, in_process = result["ours_detail"], result["baseline_detail"]
    assert server["failures"] == 0 and server["requests_per_pass"] == 8
    assert server["completion_tokens_per_pass"] == [8 * 8] == in_process["completion_tokens_per_pass"]
    assert server["latency_p99_s_median"] >= server["latency_p50_s_median"] > 0
    assert result["ratio"] == pytest.approx(result["baseline_median"] / result["ours_median"], rel=0.01)
    # the baseline serves one request at a time; the server batched the eight clients' requests
    assert in_process["clients"] == 1 and server["clients"] == 8
    batching = result["server_batching"]
    assert 2 <= batching["max_batch_size"] <= 8 and sum(batching["batch_size_histogram"].values()) > 0
    assert batching["decode_steps"] == sum(batching["batch_size_histogram"].values())


def test_verdict_labels_and_position_swap_arithmetic() -> None:
    from mai_models.eval.judges import combine_games, parse_verdict

    assert parse_verdict("A is better. [[A>B]]") == "A>B"
    assert parse_verdict("first [[B>A]] then, on reflection, [[A>>B]]") == "A>>B"
    assert parse_verdict("no label here") is None
    # The second game is played with positions swapped: B>A there means the first model won again.
    assert combine_games("A>B", "B>A") == "model_a"
    assert combine_games("A>>B", "A>B") == "model_a"  # strong verdicts weigh 3
    assert combine_games("A>B", "A>B") == "tie"  # position bias cancels out
    assert combine_games(None, "A>>B") == "model_b"


def test_openai_compatible_judge_plays_two_swapped_games(server: ServerThread, model_dir: Path) -> None:
    from mai_models.eval.judges import OpenAIJudge
    from mai_models.eval.scoring import HFScoringModel

    a, b = HFScoringModel(model_dir), HFScoringModel(model_dir)
    a.name, b.name = "contestant-a", "contestant-b"
    judge = OpenAIJudge(f"{server.url}/v1", "mai-moe", api_key=KEY, max_new_tokens=6)
    verdict = judge.judge("Say something about Python.", "Python is a language.", a, b)
    # The tiny random judge writes no verdict label: both games parse as ties, and are recorded.
    assert verdict.winner == "tie"
    assert set(verdict.detail) == {"game_1", "game_2_swapped"}
    assert set(judge._answers) == {
        ("contestant-a", "Say something about Python."),
        ("contestant-b", "Say something about Python."),
    }
