"""``bridge check-config`` end to end, as a subprocess: exit codes, stdout, stderr format."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "deploy" / "bridge.example.toml"

if not (REPO / "bridge" / "daemon" / "_cli.py").exists():
    pytest.skip("bridge/daemon/_cli.py is not written yet", allow_module_level=True)

from bridge.daemon._config import load_config, parse_config  # noqa: E402


def check_config(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bridge", "check-config", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
    )


def test_example_is_accepted_and_printed_resolved() -> None:
    proc = check_config(EXAMPLE)
    assert proc.returncode == 0, proc.stderr
    # stdout is the resolved config: valid TOML with the same effective settings.
    printed = parse_config(proc.stdout)
    example = load_config(EXAMPLE)
    assert [r.name for r in printed.routes] == [r.name for r in example.routes]
    for a, b in zip(printed.routes, example.routes, strict=True):
        assert printed.route_stream(a) == example.route_stream(b)
    assert "max_streams = 1000" in proc.stdout


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ("[daemon]\nlog_levle = 'info'\n", "daemon.log_levle"),
        ("[stream]\nbuffer = '40'\n", "stream.buffer"),
        ("[admin]\nlisten = '127.0.0.1:70000'\n", "admin.listen"),
        ("[stream]\ndegraded_at = [30, 90, 60]\n", "stream.degraded_at[2]"),
    ],
)
def test_invalid_file_exits_2_naming_the_field(tmp_path: Path, text: str, path: str) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(textwrap.dedent(text))
    proc = check_config(bad)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"error: {bad}: {path}: "), lines[0]
