"""A mark's name may be any JSON string or number, and comes back as the same JSON value.

It used to be a string only: ``{"event":"mark","name":5}`` from an app was a protocol
error, which ended the app connection (and started a reconnect), although the docs
showed ``"name": N``. Toward a real carrier, whose mark names are strings, a number
goes out as its JSON text (5 -> "5"); the stream maps the echo back (tests/streams).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from bridge._errors import DialectError
from bridge.dialects import (
    Mark,
    PlivoApp,
    PlivoPlatform,
    SlnPlatform,
    TelnyxApp,
    TelnyxPlatform,
    TwilioApp,
    TwilioPlatform,
    decode_control,
)
from bridge.dialects._events import mark_text

from . import test_plivo, test_telnyx, test_twilio

NAMES: list[Any] = [5, 0, -3, 2.5, 5.0, 12345678901234567890, "5", "greeting", ""]


@pytest.mark.parametrize("name", NAMES)
def test_sln_accepts_and_echoes_numbers(name: Any) -> None:
    text = json.dumps({"event": "mark", "name": name})
    [mark] = decode_control(text, "platform")
    assert mark == Mark(name) and type(mark.name) is type(name)
    [echo] = SlnPlatform("s", "c", 8000).send(mark)
    assert isinstance(echo, str)
    assert json.loads(echo) == {"event": "mark", "name": name}
    assert type(json.loads(echo)["name"]) is type(name)


@pytest.mark.parametrize("name", [None, True, [], {}, {"a": 1}])
def test_sln_other_json_values_are_still_a_protocol_error(name: Any) -> None:
    with pytest.raises(DialectError, match="invalid 'mark' message"):
        decode_control(json.dumps({"event": "mark", "name": name}), "platform")


@pytest.mark.parametrize("name", NAMES)
def test_twilio_app_may_send_numbers_and_gets_them_back(name: Any) -> None:
    twilio = test_twilio.platform()
    msg = {"event": "mark", "streamSid": test_twilio.SID, "mark": {"name": name}}
    [mark] = twilio.receive(json.dumps(msg))
    assert mark == Mark(name) and type(mark.name) is type(name)
    [echo] = twilio.send(mark)
    assert isinstance(echo, str)
    assert type(json.loads(echo)["mark"]["name"]) is type(name)
    assert json.loads(echo)["mark"]["name"] == name


@pytest.mark.parametrize("name", NAMES)
def test_telnyx_app_may_send_numbers_and_gets_them_back(name: Any) -> None:
    telnyx = TelnyxPlatform(test_telnyx.STREAM, test_telnyx.CALL)
    [mark] = telnyx.receive(json.dumps({"event": "mark", "mark": {"name": name}}))
    assert mark == Mark(name) and type(mark.name) is type(name)
    [echo] = telnyx.send(mark)
    assert isinstance(echo, str)
    assert json.loads(echo)["mark"]["name"] == name
    assert type(json.loads(echo)["mark"]["name"]) is type(name)


@pytest.mark.parametrize("name", NAMES)
def test_plivo_app_may_send_numbers_and_gets_them_back(name: Any) -> None:
    plivo = test_plivo.platform()
    msg = {"event": "checkpoint", "streamId": test_plivo.STREAM, "name": name}
    [mark] = plivo.receive(json.dumps(msg))
    assert mark == Mark(name) and type(mark.name) is type(name)
    [echo] = plivo.send(mark)
    assert isinstance(echo, str)
    assert json.loads(echo)["name"] == name
    assert type(json.loads(echo)["name"]) is type(name)


def test_toward_real_carriers_a_number_goes_out_as_its_json_text() -> None:
    twilio = test_twilio.started_app()
    assert isinstance(twilio, TwilioApp)
    [out] = twilio.send(Mark(5))
    assert isinstance(out, str) and json.loads(out)["mark"]["name"] == "5"
    telnyx = TelnyxApp()
    telnyx.receive(json.dumps(test_telnyx.CONNECTED))
    telnyx.receive(json.dumps(test_telnyx.START))
    [out] = telnyx.send(Mark(2.5))
    assert isinstance(out, str) and json.loads(out)["mark"]["name"] == "2.5"
    plivo = test_plivo.started_app()
    assert isinstance(plivo, PlivoApp)
    [out] = plivo.send(Mark(7))
    assert isinstance(out, str) and json.loads(out)["name"] == "7"
    assert isinstance(test_plivo.platform(), PlivoPlatform)
    assert isinstance(test_twilio.platform(), TwilioPlatform)


@pytest.mark.parametrize(
    ("name", "text"), [(5, "5"), (2.5, "2.5"), (5.0, "5.0"), ("5", "5"), ("a b", "a b")]
)
def test_mark_text(name: Any, text: str) -> None:
    assert mark_text(name) == text
