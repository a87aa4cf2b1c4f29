"""The pieces the new dialects share: ``PendingMarks`` and the ``SPEC`` shape."""

from __future__ import annotations

import attrs
import pytest

from bridge.dialects import Cleared, DialectSpec, Mark, WireFormat
from bridge.dialects._asterisk_ws import SPEC as ASTERISK
from bridge.dialects._exotel import SPEC as EXOTEL
from bridge.dialects._marks import PendingMarks
from bridge.dialects._vonage import SPEC as VONAGE
from bridge.media import codec_for

SPECS = [ASTERISK, VONAGE, EXOTEL]


def test_pending_marks_map_ids_and_settle_on_clear() -> None:
    marks = PendingMarks()
    assert [marks.sent(n) for n in ("a", "b", "a")] == ["m1", "m2", "m3"]
    assert marks.echoed("m2") == "b"
    assert marks.echoed("m2") is None  # once only
    marks.clear(cleared=True)
    assert marks.take() == [Mark("a"), Mark("a"), Cleared()]
    assert marks.take() == []
    marks.clear(cleared=False)
    assert marks.take() == []
    assert (marks.settled, marks.stale_echoes) == (2, 1)


def test_pending_marks_are_bounded() -> None:
    marks = PendingMarks(limit=2)
    for name in "abc":
        marks.sent(name)
    assert marks.take() == [Mark("a")]  # the oldest, settled at once
    assert list(marks.pending.values()) == ["b", "c"] and marks.overflowed == 1


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_every_spec_has_the_same_shape(spec: DialectSpec) -> None:
    assert attrs.fields_dict(type(spec)).keys() == attrs.fields_dict(DialectSpec).keys()
    platform, app = spec.roles()
    for role in (platform, app):
        for method in ("receive", "send", "send_audio"):
            assert callable(getattr(role, method))
    assert hasattr(app, "take_events") == spec.capabilities.settles_marks
    assert spec.format(spec.default_format) in spec.formats
    for fmt in spec.formats:
        assert isinstance(fmt, WireFormat)
        codec_for(fmt.codec)  # a bridge.media codec name
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        spec.name = "x"  # type: ignore[misc]
