"""Run ``bridge run`` as a real process for signal/drain/notify tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def write_config(tmp_path: Path, extra_routes: str = "", **sections: str) -> Path:
    daemon = sections.get("daemon", 'drain_timeout = "2s"')
    text = f"""
[daemon]
log_level = "info"
log_format = "json"
{daemon}

[admin]
listen = "127.0.0.1:0"

[audiosocket]
listen = "127.0.0.1:0"

[websocket]
listen = ""

[rtp]
ports = "42000-42099"

[records]
path = "{tmp_path / "bridge.sqlite3"}"

[[routes]]
name = "as-echo"
match = {{ listener = "audiosocket" }}
app = {{ url = "echo:" }}
{extra_routes}
"""
    path = tmp_path / "bridge.toml"
    path.write_text(text)
    return path


class BridgeProcess:
    """``bridge run -c FILE`` with JSON logs on stderr, parsed as they come."""

    def __init__(self, config: Path, env: dict[str, str] | None = None) -> None:
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bridge", "run", "-c", str(config)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
        self.lines: list[dict[str, Any]] = []
        self.listeners: dict[str, tuple[str, int]] = {}

    def wait_for(self, msg: str, timeout_s: float = 10.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        for line in self.lines:
            if line.get("msg", "").startswith(msg):
                return line
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            raw = self.proc.stdout.readline()
            if not raw:
                raise AssertionError(f"bridge exited before logging {msg!r}: {self.lines}")
            try:
                line = json.loads(raw)
            except ValueError:
                line = {"msg": raw.decode(errors="replace").strip()}
            self.lines.append(line)
            if line.get("msg", "").startswith(msg):
                return line
        raise AssertionError(f"no {msg!r} within {timeout_s}s: {self.lines}")

    def wait_ready(self) -> None:
        line = self.wait_for("bridge ready")
        for name, addr in line["listeners"].items():
            host, port = addr.rsplit(":", 1)
            self.listeners[name] = (host, int(port))

    def url(self, path: str) -> str:
        host, port = self.listeners["admin"]
        return f"http://{host}:{port}{path}"

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
