"""Tiny timing harness shared by the per-frame benchmarks.

Each benchmark module exposes ``CASES: list[tuple[str, Callable[[], object]]]``: a label
and a zero-argument callable doing the work for ONE frame. ``measure`` times each case
with ``timeit`` (best of ``repeat`` runs, so noise from the other tenant of this 2-core VM
inflates nothing) and returns ns per call.
"""

from __future__ import annotations

import timeit
from collections.abc import Callable, Sequence

Case = tuple[str, Callable[[], object]]


def measure(fn: Callable[[], object], *, min_time_s: float = 0.05, repeat: int = 5) -> float:
    """Best-of-``repeat`` ns per call of ``fn``."""
    timer = timeit.Timer(fn)
    number, _ = timer.autorange()
    # autorange targets 0.2 s; scale down to min_time_s for a quick table.
    number = max(1, int(number * min_time_s / 0.2))
    best = min(timer.repeat(repeat=repeat, number=number))
    return best / number * 1e9


def run_cases(cases: Sequence[Case], *, quick: bool = False) -> list[tuple[str, float]]:
    min_time = 0.01 if quick else 0.05
    repeat = 2 if quick else 5
    return [(label, measure(fn, min_time_s=min_time, repeat=repeat)) for label, fn in cases]


def print_table(title: str, rows: Sequence[tuple[str, float]]) -> None:
    width = max((len(label) for label, _ in rows), default=10)
    print(f"\n{title}")
    print(f"{'operation':<{width}}  {'ns/frame':>10}  {'µs/frame':>9}")
    print(f"{'-' * width}  {'-' * 10}  {'-' * 9}")
    for label, ns in rows:
        print(f"{label:<{width}}  {ns:>10.0f}  {ns / 1000:>9.2f}")
