"""Errors a user can fix. The CLI prints them as one line instead of a traceback."""


class MaiUserError(Exception):
    """A configuration or input problem with a one-line, actionable message."""
