"""Did-you-mean for one-line errors: the closest allowed name, and the check of a value against a fixed set.

Below config, registry and schedule (it imports only errors), so each of them can name the nearest choice
without importing the others.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any

from asdcli.errors import ConfigError, shown


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """'; did you mean X?' for the closest candidate, or ''."""
    close = difflib.get_close_matches(str(name), [str(c) for c in candidates], n=1, cutoff=0.6)
    return f"; did you mean {shown(close[0])}?" if close else ""


def check_choice(value: Any, allowed: tuple, path: str) -> Any:
    """`value` if it is one of `allowed` (a Literal's values), else the one-line error with a did-you-mean."""
    if value not in allowed:
        raise ConfigError(f"{path}: {shown(value)} is not allowed{did_you_mean(str(value), map(str, allowed))}; "
                          f"allowed: {', '.join(repr(a) for a in allowed)}")
    return value
