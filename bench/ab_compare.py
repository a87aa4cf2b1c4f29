"""Per-frame costs of two source trees side by side: the same benchmark, alternating.

    .venv/bin/python bench/ab_compare.py OLD_TREE [NEW_TREE] [--bench bench_pure.py]
                                         [--rounds 3] [--quick] [--match REGEX]

``OLD_TREE`` and ``NEW_TREE`` (default: this checkout) are directories holding ``bridge/``
and ``bench/``, e.g. an older revision unpacked with
``git archive <rev> bridge bench | tar -x -C /tmp/old``. Each round runs the benchmark
script of each tree once, in its own process, old and new one after the other, so that
whatever else the machine is doing weighs on both alike; every row is then the median of
the rounds' figures (each already a best-of-N ``timeit``, see ``_harness``), and the
ratio new/old is printed. Rows are matched by table title and label; a row that exists in
one tree only is listed with a dash on the other side.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
from collections.abc import Sequence

_ROW = re.compile(r"^(?P<label>\S.*?)\s{2,}(?P<ns>\d+)\s+(?P<us>\d+\.\d+)$")


def _run(tree: str, bench: str, quick: bool) -> dict[str, float]:
    cmd = [sys.executable, os.path.join(tree, "bench", bench)]
    if quick:
        cmd.append("--quick")
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=tree).stdout
    rows: dict[str, float] = {}
    title = ""
    lines = out.splitlines()
    for i, line in enumerate(lines):
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        if nxt.startswith("operation"):
            title = line.strip()
            continue
        m = _ROW.match(line)
        if m and title:
            rows[f"{title} | {m['label'].strip()}"] = float(m["ns"])
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old")
    parser.add_argument("new", nargs="?", default=here)
    parser.add_argument("--bench", default="bench_pure.py")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--match", default="", help="only rows whose title | label matches")
    args = parser.parse_args(argv)
    old: dict[str, list[float]] = {}
    new: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        for tree, into in ((args.old, old), (args.new, new)):
            for key, ns in _run(tree, args.bench, args.quick).items():
                into.setdefault(key, []).append(ns)
    pattern = re.compile(args.match)
    keys = [k for k in dict.fromkeys([*old, *new]) if pattern.search(k)]
    width = max((len(k) for k in keys), default=10)
    print(f"{args.bench}: median of {args.rounds} alternating rounds, ns per frame")
    print(f"{'row':<{width}}  {'old':>8}  {'new':>8}  {'new/old':>7}")
    for key in keys:
        a = statistics.median(old[key]) if key in old else None
        b = statistics.median(new[key]) if key in new else None
        ratio = f"{b / a:7.2f}" if a and b else "      -"
        sa = f"{a:8.0f}" if a is not None else "       -"
        sb = f"{b:8.0f}" if b is not None else "       -"
        print(f"{key:<{width}}  {sa}  {sb}  {ratio}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
