"""Errors a user can fix. The CLI prints them as one line instead of a traceback."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import ValidationError


class MaiUserError(Exception):
    """A configuration or input problem with a one-line, actionable message."""


class ServiceUnavailable(MaiUserError):
    """A network service (DVC remote, MLflow server, object store) did not answer: worth retrying later,
    unlike a problem with the input or the configuration."""


def first_validation_error(exc: ValidationError) -> tuple[str, str]:
    """Where (the dotted field path, "" for the model itself) and why pydantic refused, from its first
    error: the exception's own text starts with an error count, not the reason."""
    err = exc.errors()[0]
    return ".".join(str(p) for p in err["loc"]), err["msg"].removeprefix("Value error, ")
