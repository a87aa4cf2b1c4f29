"""Scaling across cores: two bridge processes sharing the AudioSocket port.

Two ``bridge run`` processes, each with ``[audiosocket] reuse_port = true`` on the same
port (the kernel spreads new connections between them by a hash of the 4-tuple), with
their own admin port, RTP range and records file, one pinned to each core. Compared
with one process pinned to core 0, on the same machine with the same load.

The load on a 2-core VM: there is no third core for the generator and the echo-server,
and together they cost about as much CPU per call-frame as bridge itself. So in BOTH
layouts they run unpinned (the scheduler puts them wherever there is room), and the
ratio is "calls this whole machine holds, load included, with two processes vs one":

* one process: bridge has core 0; the load has most of core 1;
* two processes: bridge has both cores and the load competes with it on both.

With a separate load machine the ratio would approach 2; here it is bounded by the load
share, and the per-process CPU figures show it. Service levels as in the headline
(each process < 70 % of its core, lateness p99 <= 2 ms, added p99 <= 5 ms against the
direct run at the same N with the same unpinned load, 0 lost).

    .venv/bin/python bench/scaling.py            # ~5 min
    .venv/bin/python bench/scaling.py --quick    # ~40 s: one point per layout
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import _procs as P
from bench.headline import DEFAULT_RATE, GATES, SLO, Rig, largest_within, search


def run(*, single_ladder: list[int] | None = None, double_ladder: list[int] | None = None,
        window_s: float = 6.0, settle_s: float = 1.0, rate: float = DEFAULT_RATE,
        refine_steps: int = 1, quick: bool = False, save: bool = True,
        gate: str = "all", repeats: int = 1, retries: int = 2, margin_s: float = 2.5,
        verbose: bool = True) -> dict[str, Any]:  # fmt: skip
    """``gate``: "all" service levels, or "excluding_added_latency" (the added latency
    depends on the playout grid's history more than on load: see bench/README.md)."""
    if single_ladder is None:
        single_ladder = [100] if quick else [50, 100, 150, 200]
    if double_ladder is None:
        double_ladder = [150] if quick else [100, 150, 200, 250, 300]
    started = time.monotonic()
    directs: dict[int, dict[str, Any]] = {}
    with P.workdir("bridge-scaling-") as wd:
        pinned = P.NCPU >= 2
        rig = Rig(wd, rate=rate, settle_s=settle_s, window_s=window_s,
                  sut_cpus=[0] if pinned else None, load_cpus=None,
                  multi_cpus=[[0], [1]] if pinned else [None, None], retries=retries,
                  margin_s=margin_s, verbose=verbose)  # fmt: skip
        try:
            rig.log(f"scaling: one process {single_ladder}; two processes {double_ladder}")
            steps = 0 if quick else refine_steps
            single = search(rig, "bridge", single_ladder, directs, refine_steps=steps, gate=gate,
                            repeats=repeats)  # fmt: skip
            double = search(rig, "bridge2", double_ladder, directs, refine_steps=steps, gate=gate,
                            repeats=repeats)  # fmt: skip
        finally:
            rig.close()
    one, two = largest_within(single, gate), largest_within(double, gate)
    doc = {
        "machine": P.machine(),
        "method": {"bridge_cpus": [[0]], "bridge2_cpus": [[0], [1]], "load_cpus": "unpinned",
                   "window_s": window_s, "slo": SLO, "gate": gate},
        "one_process": single,
        "two_processes": double,
        "direct": [directs[n] for n in sorted(directs)],
        "result": {"one_process_calls": one, "two_process_calls": two,
                   "ratio": round(two / one, 2) if one else None},
        "wall_s": round(time.monotonic() - started, 1),
    }
    if save:
        doc["json"] = str(P.save_json("scaling.json", doc))
    print_table(doc)
    return doc


def print_table(doc: dict[str, Any]) -> None:
    print(f"\n{'layout':<14} {'N':>4} {'cpu/proc %':>16} {'streams/proc':>13} {'late p99':>8} "
          f"{'rtt p99':>8} {'added p99':>9} {'lost':>5} {'core busy %':>14}  within")  # fmt: skip
    for key, label in (("one_process", "1 process"), ("two_processes", "2 processes")):
        for p in doc[key]:
            per = p["window"]["cpu_percent"]
            cpus = "/".join(str(v) for k, v in sorted(per.items()) if k.startswith("sut"))
            busy = "/".join(str(v) for _, v in sorted(p["window"]["core_busy_percent"].items()))
            spp = "/".join(map(str, p.get("streams_per_process", []))) or "-"
            print(f"{label:<14} {p['n']:>4} {cpus:>16} {spp:>13} "
                  f"{p.get('lateness', {}).get('p99_ms')!s:>8} {p['rtt_p99_ms']!s:>8} "
                  f"{p['added_p99_ms']!s:>9} {p['lost']:>5} {busy:>14}  "
                  f"{'yes' if p['within_slo'] else 'no: ' + '; '.join(p['slo_failures'])}")  # fmt: skip
    r = doc["result"]
    print(f"\none process holds {r['one_process_calls']} calls, two processes "
          f"{r['two_process_calls']}: ratio {r['ratio']}x (load generator and echo-server "
          f"on the same 2 cores, unpinned)")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--one", type=str, help="ladder for one process, e.g. 50,100,150")
    parser.add_argument("--two", type=str, help="ladder for two processes")
    parser.add_argument("--window", type=float, help="steady window, s (default 6; quick 3)")
    parser.add_argument("--gate", choices=GATES, default="all")
    args = parser.parse_args()
    P.install_sigterm_exit()

    def ladder(text: str | None) -> list[int] | None:
        return [int(x) for x in text.split(",")] if text else None

    run(single_ladder=ladder(args.one), double_ladder=ladder(args.two),
        window_s=args.window or (3.0 if args.quick else 6.0), quick=args.quick,
        gate=args.gate)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
