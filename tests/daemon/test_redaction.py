"""The one rule that decides what ``check-config`` hides: by field name, so a secret field
added later (a TLS key password, a Redis password) is hidden without anyone remembering."""

from __future__ import annotations

import msgspec
import pytest

from bridge.daemon._config import REDACTED, _emit, _is_secret_field, _redact_url


class FutureSection(msgspec.Struct, frozen=True, kw_only=True):
    key_file: str = "/etc/bridge/key.pem"
    key_password: str = "pw"
    redis_url: str = "redis://:hunter2@redis:6379/0"
    api_token: str = "tok"
    client_secret: str = "sec"
    max_streams: int = 5


def test_future_secret_fields_are_redacted_by_their_name() -> None:
    out: list[str] = []
    _emit(out, ["future"], FutureSection(), redact=True)
    text = "\n".join(out)
    for hidden in ("pw", "hunter2", "tok", "sec"):
        assert f'"{hidden}"' not in text and f":{hidden}@" not in text
    assert 'key_file = "/etc/bridge/key.pem"' in text
    assert f'redis_url = "redis://:{REDACTED}@redis:6379/0"' in text
    assert "max_streams = 5" in text


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("token", True),
        ("secret", True),
        ("twilio_auth_token", True),
        ("key_password", True),
        ("tls_passphrase", True),
        ("key_file", False),
        ("ca_file", False),
        ("max_tokens_per_s", False),
        ("url", False),
    ],
)
def test_secret_field_names(name: str, secret: bool) -> None:
    assert _is_secret_field(name) is secret


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://example.com/events", "https://example.com/events"),
        ("https://u:p@h.example/x", f"https://u:{REDACTED}@h.example/x"),
        ("wss://a.example/ws?lang=en&api_key=k", f"wss://a.example/ws?lang=en&api_key={REDACTED}"),
        ("echo:", "echo:"),
        ("/var/lib/bridge/bridge.sqlite3", "/var/lib/bridge/bridge.sqlite3"),
    ],
)
def test_url_credentials(url: str, shown: str) -> None:
    assert _redact_url(url) == shown
