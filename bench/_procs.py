"""Process helpers shared by the load benchmarks and the chaos scenarios.

Everything here is synchronous and cheap: the orchestrating script mostly sleeps, so it
does not disturb what it measures. Every process is started with its output going to a
log file (no pipes to fill up and block a child), pinned to CPUs with ``taskset`` when
asked, and stopped in a ``finally`` (SIGTERM, then SIGKILL after a timeout).

CPU of a process is read from ``/proc/PID/stat`` (utime + stime, all threads), RSS from
``/proc/PID/status`` (VmRSS), file descriptors from ``/proc/PID/fd``, and the busy share
of a CPU from ``/proc/stat``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "bench" / "out"
PY = sys.executable
CLK_TCK = os.sysconf("SC_CLK_TCK")
NCPU = os.cpu_count() or 1

# --------------------------------------------------------------------------- /proc


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system, every thread) the process has used."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return math.nan


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def thread_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def cpu_times() -> dict[int, tuple[float, float]]:
    """Per CPU: (busy jiffies, total jiffies) from /proc/stat. Busy is user + nice +
    system + irq + softirq; steal (the hypervisor ran someone else) counts in neither."""
    out: dict[int, tuple[float, float]] = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3].isdigit():
                name, *vals = line.split()
                v = [int(x) for x in vals] + [0] * 8
                busy = v[0] + v[1] + v[2] + v[5] + v[6]
                out[int(name[3:])] = (float(busy), float(busy + v[3] + v[4]))
    return out


def steal_s() -> float:
    """CPU seconds the hypervisor gave our vCPUs to someone else, since boot."""
    with open("/proc/stat") as f:
        v = f.readline().split()[1:]
    return int(v[7]) / CLK_TCK if len(v) > 7 else 0.0


def cpu_busy(before: dict[int, tuple[float, float]], after: dict[int, tuple[float, float]]) -> dict[int, float]:
    """Busy fraction of each CPU between two :func:`cpu_times` samples."""
    busy = {}
    for cpu, (b1, t1) in after.items():
        b0, t0 = before.get(cpu, (0.0, 0.0))
        busy[cpu] = (b1 - b0) / (t1 - t0) if t1 > t0 else 0.0
    return busy


def process_cpu() -> dict[int, float]:
    """CPU seconds of every process on the machine (kernel threads included), by pid."""
    out: dict[int, float] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                out[int(name)] = cpu_s(int(name))
    return out


def others_cpu_s(before: dict[int, float], after: dict[int, float], ours: set[int]) -> float:
    """CPU seconds used between two :func:`process_cpu` samples by processes not in
    ``ours`` (a process that appeared in between counts in full; one that exited in
    between is missed). Per-process CPU is exact (scheduler runtime), unlike the per-CPU
    tick counts of /proc/stat, which miss most of a process that wakes every millisecond."""
    total = 0.0
    for pid, t in after.items():
        if pid not in ours:
            total += t - before.get(pid, 0.0)
    return total


def busy_s() -> float:
    """CPU seconds all CPUs have been busy since boot (every process, kernel included)."""
    return sum(b for b, _ in cpu_times().values()) / CLK_TCK


def established(port: int) -> int:
    """Established TCP connections whose *local* port is ``port`` (the server side of
    connections to a listener), from /proc/net/tcp{,6}: costs the server nothing."""
    n = 0
    want = f":{port:04X}"
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    parts = line.split(None, 4)
                    if parts[3] == "01" and parts[1].endswith(want):
                        n += 1
        except OSError:
            pass
    return n


def load_average() -> float:
    return os.getloadavg()[0]


def pin_self(cpus: Sequence[int] | None) -> None:
    """Pin this (orchestrating) process, so its polling stays off the measured core."""
    if cpus:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, set(cpus))


# --------------------------------------------------------------------------- ports


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_udp_range(count: int, lo: int = 47000, hi: int = 60000) -> tuple[int, int]:
    """A run of ``count`` consecutive UDP ports, all free right now (a best effort: other
    test runs on this machine use 40000-42999)."""
    start = lo + (os.getpid() * 7) % max(1, (hi - lo - count))
    for base in list(range(start, hi - count, count)) + list(range(lo, start, count)):
        ok = True
        for p in (base, base + count - 1, base + count // 2):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                try:
                    s.bind(("127.0.0.1", p))
                except OSError:
                    ok = False
                    break
        if ok:
            return base, base + count - 1
    raise RuntimeError("no free UDP port range")


# --------------------------------------------------------------------------- HTTP


def http_json(url: str, method: str = "GET", body: Any = None, timeout: float = 5.0) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return json.loads(exc.read() or b"null")


def http_text(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return str(resp.read().decode())


def metric(text: str, name: str) -> float | None:
    """One unlabelled sample from a Prometheus text exposition."""
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{}"):
            return float(line.rsplit(None, 1)[1])
    return None


# --------------------------------------------------------------------------- processes


class Proc:
    """A child process with its stdout and stderr in files under ``logdir``."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        logdir: Path,
        *,
        cpus: Sequence[int] | None = None,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        if cpus:
            self.argv = ["taskset", "-c", ",".join(map(str, cpus)), *self.argv]
        self.out_path = logdir / f"{name}.out"
        self.err_path = logdir / f"{name}.err"
        self._out = open(self.out_path, "ab")  # noqa: SIM115 (closed in stop())
        self._err = open(self.err_path, "ab")  # noqa: SIM115
        self.started = time.monotonic()
        self.popen = subprocess.Popen(
            self.argv,
            cwd=cwd or REPO,
            stdout=self._out,
            stderr=self._err,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stdout(self) -> str:
        with contextlib.suppress(ValueError):
            self._out.flush()
        return self.out_path.read_text(errors="replace")

    def stderr(self) -> str:
        with contextlib.suppress(ValueError):
            self._err.flush()
        return self.err_path.read_text(errors="replace")

    def wait_output(self, needle: str, timeout_s: float = 15.0, stream: str = "stdout") -> str:
        """Wait until ``needle`` appears in the output; return that line."""
        deadline = time.monotonic() + timeout_s
        path = self.out_path if stream == "stdout" else self.err_path
        while time.monotonic() < deadline:
            for line in path.read_text(errors="replace").splitlines():
                if needle in line:
                    return line
            if not self.alive():
                raise RuntimeError(
                    f"{self.name} exited ({self.returncode}) before printing {needle!r}:\n"
                    f"{self.stderr()[-2000:]}"
                )
            time.sleep(0.02)
        raise TimeoutError(f"{self.name}: no {needle!r} within {timeout_s}s")

    def wait(self, timeout_s: float) -> int:
        try:
            return self.popen.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def send_signal(self, sig: int) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=5)

    def stop(self, timeout_s: float = 10.0, sig: int = signal.SIGTERM) -> int | None:
        """SIGTERM (or ``sig``), then SIGKILL after ``timeout_s``; the exit status."""
        if self.alive():
            self.send_signal(sig)
            try:
                self.popen.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
        for f in (self._out, self._err):
            with contextlib.suppress(OSError):
                f.close()
        return self.popen.returncode

    def __enter__(self) -> Proc:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def workdir(prefix: str = "bridge-bench-", keep: bool = False) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        if not keep:
            import shutil

            shutil.rmtree(path, ignore_errors=True)


# --------------------------------------------------------------------------- bridge


def bridge_config(
    path: Path,
    *,
    admin_port: int,
    audiosocket_port: int | None,
    app_url: str,
    websocket_port: int | None = None,
    rtp_ports: tuple[int, int] | None = None,
    records: Path | None = None,
    reuse_port: bool = False,
    log_level: str = "warning",
    drain_timeout: str = "30s",
    max_streams: int = 5000,
    max_pending: int = 1024,
    callback_url: str | None = None,
    callbacks: str = "",
    stream: str = "",
    rtp_timeout: str = "10s",
) -> Path:
    """Write a bridge config: AudioSocket (and optionally WebSocket Twilio and RTP)
    routes to ``app_url`` over sln at 8 kHz (``BENCH_APP_RATE`` to change)."""
    rtp = rtp_ports or free_udp_range(100)
    records = records or path.with_suffix(".sqlite3")
    cb = f'\ncallback = {{ url = "{callback_url}", secret = "bench" }}' if callback_url else ""
    # BENCH_APP_RATE=16000: the app leg at 16 kHz, so every call-frame is resampled
    # 8 -> 16 kHz and back (the echo-server's sln echoes any rate). The watermark does not
    # survive a band-limited resampler, so echoes are not matched then: read the CPU.
    app_rate = int(os.environ.get("BENCH_APP_RATE", "8000"))
    app = f'app = {{ url = "{app_url}", encapsulation = "sln", sample_rate = {app_rate} }}'
    ws_listen = f"127.0.0.1:{websocket_port}" if websocket_port else ""
    as_listen = f"127.0.0.1:{audiosocket_port}" if audiosocket_port else ""
    routes = f"""
[[routes]]
name = "as-sln"
match = {{ listener = "audiosocket" }}
{app}{cb}

[[routes]]
name = "rtp-sln"
match = {{ listener = "rtp" }}
{app}{cb}
"""
    if websocket_port:
        routes += f"""
[[routes]]
name = "twilio-sln"
match = {{ listener = "websocket", path = "/twilio" }}
carrier = "twilio"
{app}{cb}
"""
    text = f"""[daemon]
log_level = "{log_level}"
log_format = "json"
max_streams = {max_streams}
drain_timeout = "{drain_timeout}"

[admin]
listen = "127.0.0.1:{admin_port}"

[audiosocket]
listen = "{as_listen}"
reuse_port = {"true" if reuse_port else "false"}
max_pending = {max_pending}

[websocket]
listen = "{ws_listen}"

[rtp]
ports = "{rtp[0]}-{rtp[1]}"
timeout = "{rtp_timeout}"

[records]
path = "{records}"

[callbacks]
{callbacks}

[stream]
{stream}
{routes}"""
    path.write_text(text)
    return path


class Bridge(Proc):
    """``bridge run -c CONFIG`` and its admin API."""

    def __init__(self, name: str, config: Path, admin_port: int, logdir: Path, *,
                 cpus: Sequence[int] | None = None) -> None:  # fmt: skip
        # BENCH_BRIDGE_SRC=/path/to/another/checkout runs the daemon (only the daemon:
        # the generator and the echo-server stay on this checkout) from that source:
        # an A/B of a patch without touching this tree.
        src = os.environ.get("BENCH_BRIDGE_SRC")
        env = {"PYTHONPATH": src} if src else None
        super().__init__(name, [PY, "-m", "bridge", "run", "-c", str(config)], logdir,
                         cpus=cpus, env=env, cwd=Path(src) if src else None)  # fmt: skip
        self.admin = f"http://127.0.0.1:{admin_port}"

    def wait_ready(self, timeout_s: float = 20.0) -> float:
        """Poll /readyz; seconds from exec to ready."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited ({self.returncode}):\n{self.stderr()[-3000:]}")
            try:
                with urllib.request.urlopen(self.admin + "/readyz", timeout=1) as resp:
                    if resp.status == 200:
                        return time.monotonic() - self.started
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.05)
        raise TimeoutError(f"{self.name} not ready within {timeout_s}s:\n{self.stderr()[-3000:]}")

    def live_streams(self) -> list[dict[str, Any]]:
        return list(http_json(self.admin + "/v1/streams?limit=1000", timeout=30)["streams"])

    def streams_active(self) -> float | None:
        return metric(http_text(self.admin + "/metrics"), "bridge_streams_active")

    def playout_trimmed(self, settle_s: float = 10.0) -> int:
        """Caller frames bridge's playout deliberately did not return intact: dropped to
        remove standing latency after a burst, or changed by the cut (cross-faded or
        shortened, which a sample-exact watermark does not survive). A watermark count
        sees these as lost; they are not losses but decisions, counted by bridge.

        Read once the streams have closed (a stream's last counts reach the metrics when
        it closes), waiting up to ``settle_s`` for that."""
        wait_until(lambda: not self.live_streams(), settle_s, 0.1)
        text = http_text(self.admin + "/metrics")
        return int(
            (metric(text, "bridge_playout_trimmed_frames_total") or 0)
            + (metric(text, "bridge_playout_altered_frames_total") or 0)
        )

    def tasks(self) -> float | None:
        """``bridge_tasks``: every Trio task alive in the daemon, counted at scrape."""
        return metric(http_text(self.admin + "/metrics"), "bridge_tasks")

    def log_lines(self) -> list[dict[str, Any]]:
        out = []
        for raw in self.stderr().splitlines() + self.stdout().splitlines():
            try:
                out.append(json.loads(raw))
            except ValueError:
                if raw.strip():
                    out.append({"msg": raw})
        return out


def echo_server(name: str, logdir: Path, *, port: int | None = None, cpus: Sequence[int] | None = None,
                extra: Sequence[str] = ()) -> tuple[Proc, str]:  # fmt: skip
    """``bridge echo-server`` (sln); returns the process and its ws:// URL."""
    port = port or free_port()
    proc = Proc(
        name,
        [PY, "-m", "bridge", "echo-server", "--listen", f"127.0.0.1:{port}",
         "--log-level", "warning", *extra],
        logdir,
        cpus=cpus,
    )  # fmt: skip
    line = proc.wait_output("ready ")
    return proc, line.split()[1]


def call_argv(
    transport: str,
    target: str,
    *,
    calls: int,
    duration_s: float,
    rate: float = 50.0,
    extra: Sequence[str] = (),
) -> list[str]:
    return [
        PY, "-m", "bridge", "call", "--transport", transport, "--target", target,
        "--calls", str(calls), "--rate", f"{rate:g}", "--duration", f"{duration_s:g}s",
        "--json", *extra,
    ]  # fmt: skip


def read_report(proc: Proc) -> dict[str, Any]:
    """The ``bridge call --json`` document a finished generator wrote."""
    text = proc.stdout()
    try:
        return dict(json.loads(text))
    except ValueError as exc:
        raise RuntimeError(
            f"{proc.name}: no JSON report (exit {proc.returncode}):\n{text[-1000:]}\n{proc.stderr()[-2000:]}"
        ) from exc


def wait_until(predicate: Any, timeout_s: float, interval_s: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return bool(predicate())


def pct(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile, ``q`` in 0..100; nan when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return float(ordered[min(rank, len(ordered)) - 1])


def save_json(name: str, data: Any) -> Path:
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / name
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return path


def machine() -> dict[str, Any]:
    import platform

    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    head = ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        head = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=REPO,
                              capture_output=True, text=True, timeout=5).stdout.strip()  # fmt: skip
    return {
        "git": head,
        "bridge_src": os.environ.get("BENCH_BRIDGE_SRC", str(REPO)),
        "cpus": NCPU,
        "cpu_model": model,
        "python": platform.python_version(),
        "load_average_1m": round(load_average(), 2),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def kill_on_exit(procs: list[Proc]) -> None:
    """Stop every process in ``procs`` (reverse order); never raises."""
    for p in reversed(procs):
        with contextlib.suppress(Exception):
            p.stop(timeout_s=10)


def _sigterm_to_exit() -> None:
    """Make SIGTERM raise SystemExit, so ``finally`` blocks stop the children."""

    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


install_sigterm_exit = _sigterm_to_exit
