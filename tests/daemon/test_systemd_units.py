"""The shipped systemd units: `systemd-analyze verify` clean, exposure score ≤ 2.0."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNITS_DIR = Path(__file__).resolve().parents[2] / "systemd"
SHIPPED_BINARY = "/usr/local/bin/bridge"
MAX_EXPOSURE = 2.0

SYSTEMD_ANALYZE = shutil.which("systemd-analyze") or (
    "/usr/bin/systemd-analyze" if Path("/usr/bin/systemd-analyze").exists() else None
)
pytestmark = pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze not installed")

# (shipped file, the name to analyze it under: templates need an instance)
UNITS = [("bridge.service", "bridge.service"), ("bridge@.service", "bridge@0.service")]


def _installed_binary() -> str:
    """The bridge console script of this environment, for ExecStart.

    `verify` checks that ExecStart's binary exists; the shipped units name the
    deployment path (/usr/local/bin/bridge), which a test host usually lacks. We verify
    the unit with only that path replaced, by the script of the venv under test.
    """
    candidate = Path(sys.executable).parent / "bridge"
    if candidate.exists():
        return str(candidate)
    return shutil.which("bridge") or sys.executable


def _prepared(tmp_path: Path, filename: str) -> Path:
    text = (UNITS_DIR / filename).read_text()
    assert f"ExecStart={SHIPPED_BINARY} " in text
    if not Path(SHIPPED_BINARY).exists():
        text = text.replace(f"ExecStart={SHIPPED_BINARY} ", f"ExecStart={_installed_binary()} ")
    target = tmp_path / filename
    target.write_text(text)
    return target


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    assert SYSTEMD_ANALYZE is not None
    return subprocess.run(
        [SYSTEMD_ANALYZE, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(("filename", "name"), UNITS)
def test_verify_prints_nothing(tmp_path: Path, filename: str, name: str) -> None:
    _prepared(tmp_path, filename)
    result = _run("verify", str(tmp_path / name), cwd=tmp_path)
    # verify exits 0 even for unknown keys and typos; any output at all is a finding.
    assert result.stdout == ""
    assert result.stderr == ""
    assert result.returncode == 0


def test_verify_catches_typos(tmp_path: Path) -> None:
    """Guard for the test above: a misspelt key must produce output."""
    unit = _prepared(tmp_path, "bridge.service")
    unit.write_text(unit.read_text().replace("KillMode=", "KillMod="))
    result = _run("verify", str(unit), cwd=tmp_path)
    assert "KillMod" in result.stdout + result.stderr


@pytest.mark.parametrize(("filename", "name"), UNITS)
def test_security_exposure(tmp_path: Path, filename: str, name: str) -> None:
    _prepared(tmp_path, filename)
    result = _run("security", "--offline=true", "--no-pager", str(tmp_path / name), cwd=tmp_path)
    output = result.stdout + result.stderr
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", output)
    assert match, output
    score = float(match.group(1))
    assert score <= MAX_EXPOSURE, output


@pytest.mark.parametrize("filename", ["bridge.service", "bridge@.service"])
def test_unit_contract(filename: str) -> None:
    """The settings the daemon's behaviour relies on (drain vs. stop timeout, notify)."""
    settings: dict[str, list[str]] = {}
    for line in (UNITS_DIR / filename).read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";")):
            key, value = line.split("=", 1)
            settings.setdefault(key.strip(), []).append(value.strip())
    assert settings["Type"] == ["notify"]
    assert settings["NotifyAccess"] == ["main"]
    assert settings["KillMode"] == ["mixed"]
    assert settings["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert settings["WatchdogSec"] == ["30s"]
    # Longer than the default drain_timeout (30s) plus closing time.
    assert int(settings["TimeoutStopSec"][0].removesuffix("s")) > 30
    assert settings["DynamicUser"] == ["yes"]
    assert settings["User"] == ["bridge"]  # one UID for every instance: SO_REUSEPORT
    assert settings["LimitNOFILE"] == ["65536"]
    assert "IPAddressDeny" not in settings
