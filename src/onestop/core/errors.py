"""Errors meant for the user: the command line prints their one-line message and exits non-zero."""


class OnestopError(Exception):
    """A problem the user can fix; the message says what to change."""
