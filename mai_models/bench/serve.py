"""``mai bench serve``: throughput and latency of the OpenAI-compatible server under concurrent clients,
against the same generations called in-process on the backend, in the same run.

* ours: the server as a subprocess (``python -m mai_models.serve.server``) on a free 127.0.0.1 port
  with one generation slot per client, so nothing queues or is refused; ``clients`` threads send
  ``/v1/completions`` requests through the official ``openai`` client (no retries: a failure counts).
  The server batches the concurrent generations (``serve.batcher``); the batch sizes it ran are read
  from its ``/health`` after the timed passes;
* baseline: the same prompts one after the other straight on ``HFTextBackend`` (tokenise,
  ``transformers`` forward passes with a KV cache, detokenise) in this process, with the same torch
  threads: what serving one request at a time gets out of the same model.

Every request is greedy with ``ignore_eos``, so each one generates exactly ``max_tokens`` tokens on both
sides. Each side runs one warm-up pass and then ``repeats`` timed passes over all ``requests``, the
two sides' passes taking turns while the other side idles; the figure is the wall time of a pass.
ratio = sequential seconds / server seconds: the throughput the server's batching gains over one
request at a time, net of HTTP, JSON and the event loop.
"""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from mai_models.bench.report import Side, bench_result, package_version, progress
from mai_models.errors import MaiUserError

PROMPTS = (
    "The history of the printing press",
    "Once upon a time in a small village",
    "The main reasons why rivers flood are",
    "A recipe for bread starts with",
    "In mathematics, a prime number is",
    "The weather today is",
    "Machine learning models are trained by",
    "The old lighthouse keeper said",
)
STARTUP_TIMEOUT_S = 180.0


_log = progress("serve")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def _drive(call: Callable[[str], int], prompts: list[str], clients: int) -> dict[str, Any]:
    """Run ``call(prompt) -> completion tokens`` over ``prompts`` from ``clients`` threads."""
    latencies: list[float] = []
    tokens, failures, errors = 0, 0, []

    def one(prompt: str) -> tuple[float, int | None, str | None]:
        started = time.perf_counter()
        try:
            generated = call(prompt)
        except Exception as exc:  # a failure is a result to report, not a reason to stop
            return time.perf_counter() - started, None, f"{type(exc).__name__}: {exc}"[:200]
        return time.perf_counter() - started, generated, None

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        outcomes = list(pool.map(one, prompts))
    wall = time.perf_counter() - started
    for latency, generated, error in outcomes:
        if generated is None:
            failures += 1
            errors.append(error)
            continue
        latencies.append(latency)
        tokens += generated
    return {
        "requests": len(prompts),
        "clients": clients,
        "failures": failures,
        "errors": errors[:3],
        "wall_s": round(wall, 4),
        "requests_per_s": round((len(prompts) - failures) / wall, 3),
        "latency_p50_s": round(_percentile(latencies, 50), 4),
        "latency_p99_s": round(_percentile(latencies, 99), 4),
        "completion_tokens": tokens,
        "tokens_per_s": round(tokens / wall, 2),
    }


def _start_server(
    model_dir: Path, port: int, clients: int, max_tokens: int, threads: int, log: Path
) -> subprocess.Popen:
    command = [
        sys.executable,
        "-m",
        "mai_models.serve.server",
        "--model-dir",
        str(model_dir),
        "--no-voice",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--max-concurrency",
        str(clients),
        "--max-tokens-limit",
        str(max(max_tokens, 16)),
        "--threads",
        str(threads),
        "--log-level",
        "warning",
    ]
    env = dict(os.environ)
    env.pop("MAI_SERVE_API_KEY", None)  # the benchmark server is local and open
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    with log.open("wb") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)


def _wait_ready(proc: subprocess.Popen, url: str, log: Path) -> None:
    import requests

    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise MaiUserError(f"the server exited ({proc.returncode}): {log.read_text()[-800:]}")
        try:
            if requests.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except requests.ConnectionError:
            pass  # not listening yet: poll again
        time.sleep(0.1)
    raise MaiUserError(f"the server did not start within {STARTUP_TIMEOUT_S:.0f} s: {log.read_text()[-800:]}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()  # SIGTERM to this one PID: uvicorn shuts down gracefully
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def _side(name: str, version: str, passes: list[dict[str, Any]]) -> Side:
    def median(key: str) -> float:
        return round(statistics.median(p[key] for p in passes), 4)

    errors = [e for p in passes for e in p["errors"]]
    return Side(
        name,
        version,
        [p["wall_s"] for p in passes],
        {
            "requests_per_pass": passes[0]["requests"],
            "clients": passes[0]["clients"],
            "tokens_per_s_median": median("tokens_per_s"),
            "latency_p50_s_median": median("latency_p50_s"),
            "latency_p99_s_median": median("latency_p99_s"),
            "completion_tokens_per_pass": [p["completion_tokens"] for p in passes],
            "failures": sum(p["failures"] for p in passes),
            "errors": errors[:3],
        },
    )


def run(
    model_dir: Path | str | None = None,
    clients: int = 8,
    requests: int = 64,
    max_tokens: int = 32,
    threads: int = 2,
    repeats: int = 3,
) -> dict[str, Any]:
    """Seconds per pass of ``requests`` completions from ``clients`` threads: server vs in-process."""
    import openai
    import torch

    from mai_models.serve.backends import DEFAULT_TEXT_MODEL, HFTextBackend

    if repeats < 1:
        raise MaiUserError("repeats must be at least 1")
    if model_dir is None:
        from mai_models.settings import load_settings

        model_dir = load_settings().data_dir / "hf_export"
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise MaiUserError(f"no Hugging Face export at {model_dir}; export the model first")
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(requests)]
    warmup = list(PROMPTS[:clients])

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    previous_threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory(prefix="mai-bench-serve-") as tmp:
        log = Path(tmp) / "server.log"
        proc = _start_server(model_dir, port, clients, max_tokens, threads, log)
        try:
            _wait_ready(proc, url, log)
            client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=300)
            backend = HFTextBackend(model_dir, threads=threads)  # same torch threads as the server's

            def over_http(prompt: str) -> int:
                reply = client.completions.create(
                    model=DEFAULT_TEXT_MODEL,
                    prompt=prompt,
                    max_tokens=max_tokens,
                    temperature=0,
                    extra_body={"ignore_eos": True},
                )
                return reply.usage.completion_tokens

            def in_process(prompt: str) -> int:
                ids = backend.generate_ids(
                    backend.tokenizer.encode(prompt), max_new_tokens=max_tokens, stop=()
                )
                backend.tokenizer.decode(ids)
                return len(ids)

            _drive(over_http, warmup, clients)
            _drive(in_process, warmup, 1)
            before = _batching(url)
            server, baseline = [], []
            # Passes alternate, so that both sides see the same share of a machine others use too;
            # the side not measured is idle (the server waits for requests, the backend for calls).
            for i in range(repeats):
                server.append(_drive(over_http, prompts, clients))
                baseline.append(_drive(in_process, prompts, 1))
                _log(
                    f"pass {i + 1}/{repeats}: server {server[-1]['wall_s']:.2f} s, "
                    f"sequential in-process {baseline[-1]['wall_s']:.2f} s"
                )
            batching = _timed_batching(before, _batching(url))
            backend.close()
        finally:
            _stop(proc)
            torch.set_num_threads(previous_threads)  # a caller in the same process keeps its setting
    versions = f"transformers {package_version('transformers')}, torch {package_version('torch')}"
    server_tps = statistics.median(p["tokens_per_s"] for p in server)
    baseline_tps = statistics.median(p["tokens_per_s"] for p in baseline)
    return bench_result(
        "serve",
        "seconds per pass",
        False,
        _side(
            "mai serve over HTTP (uvicorn + FastAPI, openai client)",
            f"fastapi {package_version('fastapi')}, uvicorn {package_version('uvicorn')}, {versions}",
            server,
        ),
        _side("HFTextBackend.generate_ids called in-process, one request at a time", versions, baseline),
        tokens_per_s_ratio=round(server_tps / baseline_tps, 3) if baseline_tps else None,
        server_batching=batching,
        model_dir=str(model_dir),
        max_tokens=max_tokens,
        threads=threads,
    )


def _batching(url: str) -> dict[str, Any]:
    import requests

    return requests.get(f"{url}/health", timeout=10).json().get("batching") or {}


def _timed_batching(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """The batch sizes of the timed passes only: the server's counts after them minus those before."""
    counts = {
        int(size): n - int(before.get("batch_size_histogram", {}).get(size, 0))
        for size, n in after.get("batch_size_histogram", {}).items()
    }
    counts = {size: n for size, n in sorted(counts.items()) if n > 0}
    steps = sum(counts.values())
    return {
        "decode_steps": steps,
        "max_batch_size": max(counts, default=0),
        "mean_batch_size": round(sum(s * n for s, n in counts.items()) / steps, 3) if steps else 0.0,
        "batch_size_histogram": {str(s): n for s, n in counts.items()},
    }
