"""The one place bridge imports ``audioop``.

``audioop`` is the fastest G.711 codec, byte swapper, mixer and rate converter available
to a CPython process (PERFORMANCE.md: 1.3 µs per µ-law encode + decode of a 20 ms frame,
15-70 times faster than table lookups in Python). It is in the standard library on 3.11
and 3.12, deprecated there (PEP 594), and provided by the ``audioop-lts`` package on 3.13+
(a dependency there, ``pyproject.toml``). Everything in bridge (and its tests and
benchmarks) imports it from here: ``from bridge.media import audioop``, so the warning
filter and any future replacement live in one module.
"""

from __future__ import annotations

import warnings

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

__all__ = ["audioop"]
