"""Load the exported models and run the OpenAI-compatible app under uvicorn (``mai serve``).

Also runnable as ``python -m mai_models.serve.server`` (the benchmark starts it that way), and
``ServerThread`` runs an app in a background thread of the calling process for tests.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from mai_models.errors import MaiUserError
from mai_models.serve.backends import DEFAULT_TEXT_MODEL, DEFAULT_VOICE
from mai_models.serve.limits import ServeSettings

API_KEY_ENV = "MAI_SERVE_API_KEY"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def default_dirs() -> tuple[Path, Path]:
    """(<data_dir>/hf_export, <data_dir>/mai_voice/bundle) of the project settings."""
    from mai_models.settings import load_settings

    data_dir = load_settings().data_dir
    return data_dir / "hf_export", data_dir / "mai_voice" / "bundle"


def load_backends(
    model_dir: Path | None,
    bundle_dir: Path | None,
    threads: int | None = None,
    model_name: str = DEFAULT_TEXT_MODEL,
    voice_name: str = DEFAULT_VOICE,
    max_batch: int = 8,
) -> tuple[Any, Any]:
    from mai_models.serve.backends import HFTextBackend, SpeechBackend

    if model_dir is None and bundle_dir is None:
        raise MaiUserError("nothing to serve: give a model directory, a voice bundle or both")
    text = HFTextBackend(model_dir, model_name, threads, max_batch) if model_dir is not None else None
    speech = SpeechBackend(bundle_dir, voice_name, threads or 2) if bundle_dir is not None else None
    return text, speech


def serve(
    model_dir: Path | None,
    bundle_dir: Path | None,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    settings: ServeSettings | None = None,
    threads: int | None = None,
    model_name: str = DEFAULT_TEXT_MODEL,
    voice_name: str = DEFAULT_VOICE,
    log_level: str = "info",
) -> None:
    """Serve until interrupted. ``api_key`` overrides the one in ``settings``."""
    import uvicorn

    settings = settings or ServeSettings()
    if api_key:
        settings = ServeSettings.model_validate({**settings.model_dump(), "api_key": api_key})
    if host not in LOOPBACK and settings.api_key is None:
        print(
            f"warning: serving on {host} without an API key; anyone who can reach it can use it",
            file=sys.stderr,
        )
    # every generation slot can be a row of the batch
    text, speech = load_backends(
        model_dir, bundle_dir, threads, model_name, voice_name, max_batch=settings.max_concurrency
    )
    from mai_models.serve.routes import create_app

    app = create_app(text, speech, settings)
    served = ", ".join(b.name for b in (text, speech) if b is not None)
    print(f"serving {served} on http://{host}:{port}/v1", file=sys.stderr, flush=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = ServeSettings()
    parser.add_argument(
        "--model-dir", type=Path, default=None, help="HF checkpoint (default <data_dir>/hf_export)"
    )
    parser.add_argument(
        "--voice-bundle",
        type=Path,
        default=None,
        help="ONNX voice bundle (default <data_dir>/mai_voice/bundle)",
    )
    parser.add_argument("--no-text", action="store_true", help="serve the voice only")
    parser.add_argument("--no-voice", action="store_true", help="serve the language model only")
    parser.add_argument(
        "--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)"
    )
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--api-key",
        default=None,
        help=f"require 'Authorization: Bearer KEY' (default ${API_KEY_ENV}; prefer the variable: "
        "arguments show in the process list)",
    )
    parser.add_argument(
        "--max-tokens-limit", type=int, default=defaults.max_tokens_limit, help="largest max_tokens allowed"
    )
    parser.add_argument(
        "--max-concurrency",
        type=int,
        default=defaults.max_concurrency,
        help="generations at once (text + speech); concurrent text generations share one batch",
    )
    parser.add_argument(
        "--queue-timeout",
        type=float,
        default=defaults.queue_timeout_s,
        help="seconds a request waits for a free slot before 429 (0: refuse at once)",
    )
    parser.add_argument("--max-body-bytes", type=int, default=defaults.max_body_bytes)
    parser.add_argument("--max-speech-chars", type=int, default=defaults.max_speech_chars)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads of torch (the one text batch) and onnxruntime (each synthesis)",
    )
    parser.add_argument("--model-name", default=DEFAULT_TEXT_MODEL, help="model id of the language model")
    parser.add_argument("--voice-name", default=DEFAULT_VOICE, help="model id of the voice")
    parser.add_argument(
        "--log-level", default="info", choices=("critical", "error", "warning", "info", "debug")
    )


def _resolve(explicit: Path | None, default: Path, disabled: bool, what: str) -> Path | None:
    """An explicit directory must exist; a missing default is skipped (that modality is not served)."""
    if disabled:
        return None
    if explicit is not None:
        if not explicit.exists():
            raise MaiUserError(f"{what} not found: {explicit}")
        return explicit
    if default.exists():
        return default
    print(f"note: no {what} at {default}; not serving it", file=sys.stderr)
    return None


def main(args: argparse.Namespace) -> int:
    try:
        settings = ServeSettings(
            api_key=args.api_key or os.environ.get(API_KEY_ENV) or None,
            max_tokens_limit=args.max_tokens_limit,
            max_concurrency=args.max_concurrency,
            queue_timeout_s=args.queue_timeout,
            max_body_bytes=args.max_body_bytes,
            max_speech_chars=args.max_speech_chars,
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        flag = "--" + str(first["loc"][0]).replace("_", "-").removesuffix("-s")
        raise MaiUserError(f"{flag}: {first['msg']}") from exc
    # the project settings are read only when a default is needed: a serving host may have no project
    needs_default = (args.model_dir is None and not args.no_text) or (
        args.voice_bundle is None and not args.no_voice
    )
    text_default, voice_default = default_dirs() if needs_default else (Path(), Path())
    model_dir = _resolve(args.model_dir, text_default, args.no_text, "model directory")
    bundle_dir = _resolve(args.voice_bundle, voice_default, args.no_voice, "voice bundle")
    if model_dir is None and bundle_dir is None:
        raise MaiUserError(
            "nothing to serve: export the model (hf_export) or build the voice (mai_voice/bundle) first, "
            "or pass --model-dir / --voice-bundle"
        )
    serve(
        model_dir,
        bundle_dir,
        host=args.host,
        port=args.port,
        settings=settings,
        threads=args.threads,
        model_name=args.model_name,
        voice_name=args.voice_name,
        log_level=args.log_level,
    )
    return 0


class ServerThread:
    """An app under uvicorn in a daemon thread on ``host``, on a free port unless one is given:
    ``with ServerThread(app) as server: ... server.url``."""

    def __init__(
        self, app: Any, host: str = "127.0.0.1", port: int = 0, startup_timeout: float = 30.0
    ) -> None:
        import uvicorn

        config = uvicorn.Config(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(config)
        self.host, self.port, self.startup_timeout = host, port, startup_timeout
        self._thread = threading.Thread(target=self.server.run, name="mai-serve-uvicorn", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> ServerThread:
        self._thread.start()
        deadline = time.monotonic() + self.startup_timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.01)
        # port 0 asks the OS for a free port; read back the one it chose
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=10)


def _cli() -> int:
    parser = argparse.ArgumentParser(prog="mai serve", description="OpenAI-compatible API for the models")
    add_arguments(parser)
    try:
        return main(parser.parse_args())
    except MaiUserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(_cli())
