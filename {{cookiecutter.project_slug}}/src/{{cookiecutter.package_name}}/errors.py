"""Errors that end a command with one line for the user instead of a traceback."""

import unicodedata


class UserError(Exception):
    """A problem the user can fix (missing file, bad input); exit code 1."""

    exit_code = 1
    shared = False  # True: every training process raises the same one, and rank 0 alone reports it


class UsageError(UserError):
    """A malformed command line or configuration override; exit code 2, like argparse."""

    exit_code = 2


def one_line(text: str) -> str:
    """`text` as one printable line: control characters (a newline in a file name) escaped as
    Python writes them, bytes of a file name that did not decode as \\xNN; all else unchanged."""
    return "".join(_escaped(c) if unicodedata.category(c) in ("Cc", "Cs", "Zl", "Zp") else c for c in text)


def _escaped(char: str) -> str:
    code = ord(char)
    return f"\\x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else repr(char)[1:-1]
