"""Errors a user can fix. The CLI prints them as one line instead of a traceback."""


class MaiUserError(Exception):
    """A configuration or input problem with a one-line, actionable message."""


class ServiceUnavailable(MaiUserError):
    """A network service (DVC remote, MLflow server, object store) did not answer: worth retrying later,
    unlike a problem with the input or the configuration."""
