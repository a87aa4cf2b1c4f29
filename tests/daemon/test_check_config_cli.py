"""``bridge check-config`` end to end, as a subprocess: exit codes, stdout, stderr format."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import msgspec
import pytest

from bridge.daemon._config import load_config, parse_config

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "deploy" / "bridge.example.toml"


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


SECRETS = {
    "admin.token": "adm1n-T0KEN",
    "callback.secret": "whsec-C4LLBACK",
    "auth.token": "r0ute-T0KEN",
    "auth.twilio_auth_token": "tw1l10-AUTH",
    "app.token": "acc3pt-T0KEN",
    "app.headers": "Bearer h34der-VALUE",
    "url password": "url-P4SS",
    "url query token": "qu3ry-T0KEN",
    "match.header value": "m4tch-SECRET",
}
SECRET_CONFIG = f"""
[admin]
listen = "127.0.0.1:0"
token = "{SECRETS["admin.token"]}"

[[routes]]
name = "tw"
match = {{ listener = "websocket", path = "/twilio", header = {{ name = "X-Api-Key", value = "{SECRETS["match.header value"]}" }} }}
carrier = "twilio"
auth = {{ token = "{SECRETS["auth.token"]}", twilio_auth_token = "{SECRETS["auth.twilio_auth_token"]}" }}
app = {{ url = "wss://agent.example.com/ws?token={SECRETS["url query token"]}&lang=en", encapsulation = "twilio", headers = {{ Authorization = "{SECRETS["app.headers"]}", X-Tenant = "acme" }} }}
callback = {{ url = "https://hooks:{SECRETS["url password"]}@hooks.example.com/events", secret = "{SECRETS["callback.secret"]}" }}

[[routes]]
name = "inbound"
match = {{ listener = "websocket", path = "/plivo" }}
carrier = "plivo"
app = {{ mode = "accept", token = "{SECRETS["app.token"]}" }}
"""


def run_check(path: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bridge", "check-config", "-c", str(path), *flags],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
    )


def test_check_config_redacts_every_secret_by_default(tmp_path: Path) -> None:
    path = tmp_path / "secrets.toml"
    path.write_text(SECRET_CONFIG)
    proc = run_check(path)
    assert proc.returncode == 0, proc.stderr
    for what, secret in SECRETS.items():
        assert secret not in proc.stdout, what
        assert secret.split()[-1] not in proc.stdout, what
    assert '--show-secrets' in proc.stdout.splitlines()[1]
    printed = parse_config(proc.stdout)  # still a valid config, secrets replaced
    tw = printed.routes[0]
    assert printed.admin.token == "<redacted>"
    assert tw.auth is not None and tw.auth.token == tw.auth.twilio_auth_token == "<redacted>"
    assert tw.callback is not None and tw.callback.secret == "<redacted>"
    assert tw.callback.url == "https://hooks:<redacted>@hooks.example.com/events"
    assert tw.app.url == "wss://agent.example.com/ws?token=<redacted>&lang=en"
    assert dict(tw.app.headers) == {"Authorization": "<redacted>", "X-Tenant": "<redacted>"}
    assert tw.match.header is not None and tw.match.header.value == "<redacted>"
    assert printed.routes[1].app.token == "<redacted>"
    # What is not secret is printed as it is.
    assert tw.match.path == "/twilio" and tw.match.header.name == "X-Api-Key"
    # Empty secrets stay empty: the operator sees that none is set.
    assert 'token = ""' in run_check(EXAMPLE).stdout


def test_check_config_show_secrets_prints_them_and_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "secrets.toml"
    path.write_text(SECRET_CONFIG)
    proc = run_check(path, "--show-secrets")
    assert proc.returncode == 0, proc.stderr
    for what, secret in SECRETS.items():
        assert secret in proc.stdout, what
    assert "<redacted>" not in proc.stdout
    printed = parse_config(proc.stdout)
    original = load_config(path)
    assert printed.admin == original.admin
    for a, b in zip(printed.routes, original.routes, strict=True):
        assert printed.route_stream(a) == original.route_stream(b)
        assert msgspec.structs.replace(a, stream=None) == msgspec.structs.replace(b, stream=None)
