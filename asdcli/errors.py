"""Errors that reach the user as one line and exit code 2, and the escaping every value in them goes through."""

from __future__ import annotations

import reprlib

SHOWN_MAX = 80  # characters of one value quoted in a message
LINE_MAX = 2000  # characters of a whole error line (values are cut first; this is the backstop)


class UserError(Exception):
    """Bad input: the message names the problem and the fix. The CLI exits with code 2."""


class ConfigError(UserError):
    """A recipe or override that does not validate (key path, allowed values, fix)."""


def escape(text: str) -> str:
    """`text` with every non-printable character (controls, escape sequences, bidi overrides, zero-width marks)
    written as a Python escape, so a message can never move the cursor, recolour or retitle the terminal."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


_REPR = reprlib.Repr()  # keyword arguments to Repr() need Python 3.12
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlong = 3, SHOWN_MAX, SHOWN_MAX, 40
_REPR.maxtuple = _REPR.maxlist = _REPR.maxdict = _REPR.maxset = 6


def shown(value: object, limit: int = SHOWN_MAX) -> str:
    """A value as a message quotes it: repr-like, escaped and at most `limit` characters. Large nested values
    (a YAML alias bomb) are abbreviated while walking, never expanded whole."""
    text = escape(_REPR.repr(value))
    return text if len(text) <= limit else text[:limit - 1] + "…"


def safe_line(text: str) -> str:
    """One terminal-safe line: whitespace runs (newlines included) become one space, the rest is escaped."""
    line = escape(" ".join(str(text).split()))
    return line if len(line) <= LINE_MAX else line[:LINE_MAX - 1] + "…"
