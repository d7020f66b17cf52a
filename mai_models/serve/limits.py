"""A server's limits and access control; kept apart from the app so the CLI can show the defaults
without importing FastAPI."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, SecretStr


class ServeSettings(BaseModel):
    """Limits and access control of one server."""

    model_config = ConfigDict(extra="forbid")

    api_key: SecretStr | None = Field(None, description="Bearer token every /v1 request must carry")
    max_body_bytes: int = Field(1_000_000, ge=1024, description="Larger request bodies get 413")
    max_tokens_limit: int = Field(1024, ge=1, description="Largest max_tokens a request may ask for")
    max_concurrency: int = Field(4, ge=1, description="Generations running at once (text + speech)")
    queue_timeout_s: float = Field(10.0, ge=0, description="Wait for a free slot before 429")
    max_queue: int = Field(64, ge=0, description="Requests waiting for a slot before 429 at once")
    max_speech_chars: int = Field(4096, ge=1, description="Longest speech input")
