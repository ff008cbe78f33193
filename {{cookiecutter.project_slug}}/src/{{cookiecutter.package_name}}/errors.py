"""Errors that end a command with one line for the user instead of a traceback."""


class UserError(Exception):
    """A problem the user can fix (missing file, bad input); exit code 1."""

    exit_code = 1
    shared = False  # True: every training process raises the same one, and rank 0 alone reports it


class UsageError(UserError):
    """A malformed command line or configuration override; exit code 2, like argparse."""

    exit_code = 2
