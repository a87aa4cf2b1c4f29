"""Durations as people write them: a number and a unit (``"20ms"``, ``"1.5s"``, ``"5m"``).

The config (every duration field is such a string) and the tools' command lines
(``bridge call --duration 2m``) read them with the same grammar. Pure code.
"""

from __future__ import annotations

import functools
import re
from typing import Final

__all__ = ["DURATION_HINT", "parse_duration"]

_DURATION_RE: Final = re.compile(r"(?P<num>\d+(?:\.\d+)?)(?P<unit>ms|s|m|h|d)")
_UNIT_S: Final[dict[str, float]] = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
DURATION_HINT: Final = (
    'a duration is a string: a number and a unit (ms, s, m, h, d), e.g. "20ms", "1.5s", "5m", "4h"'
)


@functools.lru_cache(maxsize=1024)
def parse_duration(text: str) -> float:
    """Seconds in a duration string (``"20ms"`` → 0.02). Raises ValueError with an example.

    Cached: the config's ``X_s`` properties call this on every access, and a config holds
    only a few dozen distinct strings.
    """
    m = _DURATION_RE.fullmatch(text)
    if m is None:
        raise ValueError(f"invalid duration {text!r}; {DURATION_HINT}")
    num = float(m["num"])
    # Divide for milliseconds so "20ms" is exactly the float 0.02, not 20 * 0.001.
    return num / 1000.0 if m["unit"] == "ms" else num * _UNIT_S[m["unit"]]
