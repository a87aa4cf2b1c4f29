"""Every benchmark, one after the other, then one summary (``make bench``).

1. ``bench_pure.py``: per-frame media and dialect work against the 20 µs budget;
2. ``bench_websocket.py``: bridge's WebSocket transport against trio-websocket;
3. ``headline.py``: calls per core, bridge and the trio-websocket baseline, and the plot;
4. ``scaling.py``: two processes with SO_REUSEPORT against one;
5. ``soak.py``: a short soak (the long one is ``make soak`` / ``bench/soak.py``).

Each runs as its own process, printing as it goes; results land in ``bench/out/``.

    .venv/bin/python bench/run_all.py            # ~25 min
    .venv/bin/python bench/run_all.py --quick    # ~3 min
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"


def step(title: str, argv: list[str], timeout_s: float) -> tuple[int, float]:
    print(f"\n{'=' * 88}\n{title}\n$ {' '.join(argv)}\n{'=' * 88}", flush=True)
    t0 = time.monotonic()
    try:
        rc = subprocess.run([sys.executable, *argv], cwd=ROOT, timeout=timeout_s, check=False).returncode
    except subprocess.TimeoutExpired:
        print(f"{title}: timed out after {timeout_s:g} s")
        rc = 124
    return rc, time.monotonic() - t0


def _load(name: str) -> dict[str, Any] | None:
    try:
        return dict(json.loads((OUT / name).read_text()))
    except (OSError, ValueError):
        return None


def summary(results: dict[str, tuple[int, float]], since: float) -> None:
    print(f"\n{'=' * 88}\nsummary\n{'=' * 88}")
    for name, (rc, took) in results.items():
        print(f"  {name:<16} exit {rc}  {took:6.1f} s")
    h = _load("headline.json")
    if h and h.get("wall_s") and (OUT / "headline.json").stat().st_mtime >= since:
        r = h["result"]
        print(f"\n  headline: bridge {r['bridge_calls_per_core']} calls per core within every service "
              f"level (target {r['target_calls_per_core']}), baseline {r['baseline_calls_per_core']}, "
              f"ratio {r['ratio']}x (target {r['target_ratio']:g}x)")  # fmt: skip
        print(f"            all levels but added latency: bridge "
              f"{r['bridge_calls_per_core_excluding_added_latency']}, baseline "
              f"{r['baseline_calls_per_core_excluding_added_latency']}, ratio "
              f"{r['ratio_excluding_added_latency']}x")  # fmt: skip
        if h.get("png"):
            print(f"            plot: {h['png']}")
    s = _load("scaling.json")
    if s and (OUT / "scaling.json").stat().st_mtime >= since:
        r = s["result"]
        print(f"  scaling:  one process {r['one_process_calls']} calls, two {r['two_process_calls']}, "
              f"ratio {r['ratio']}x (load on the same 2 cores)")  # fmt: skip
    k = _load("soak.json")
    if k and (OUT / "soak.json").stat().st_mtime >= since:
        print(f"  soak:     {k['method']['duration_s']:g} s, {k['calls']} calls, {k['lost']} frames lost, "
              f"RSS slope {k['rss_slope_mb_per_hour']} MB/h, fds {k['before']['fds']} -> "
              f"{k['after']['fds']}, live streams -> {k['after']['live']}")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="~3 minutes in all")
    parser.add_argument("--soak", default=None, help="soak length (default 60s; quick 20s)")
    parser.add_argument("--skip", action="append", default=[],
                        help="skip a step: pure, websocket, headline, scaling, soak")  # fmt: skip
    args = parser.parse_args()
    q = ["--quick"] if args.quick else []
    since = time.time()
    steps = [
        ("pure", "per-frame work (bench_pure.py)", ["bench/bench_pure.py", *q], 900),
        ("websocket", "WebSocket transport (bench_websocket.py)", ["bench/bench_websocket.py", *q], 600),
        ("headline", "calls per core (headline.py)", ["bench/headline.py", *q], 2400),
        ("scaling", "two processes (scaling.py)", ["bench/scaling.py", *q], 1200),
        ("soak", "short soak (soak.py)",
         ["bench/soak.py", "--duration", args.soak or ("20s" if args.quick else "60s"),
          "--call", "4s" if args.quick else "10s", "--sample", "2s" if args.quick else "5s"], 900),
    ]  # fmt: skip
    results: dict[str, tuple[int, float]] = {}
    for key, title, argv, timeout in steps:
        if key in args.skip:
            continue
        results[key] = step(title, argv, timeout)
    summary(results, since)
    return 1 if any(rc for rc, _ in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
