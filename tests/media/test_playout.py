"""Playout buffer: re-framing, padding, marks, clear and drained."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.media import PlayoutBuffer

FB = 320


def audio(n: int, start: int = 0) -> bytes:
    """``n`` recognisable bytes with no zero byte in them (zeros are padding)."""
    return bytes((start + i) % 255 + 1 for i in range(n))


def test_whole_frames_in_and_out() -> None:
    pb = PlayoutBuffer(FB)
    data = audio(3 * FB)
    pb.push(data)
    assert pb.queued_ms == 60
    assert [pb.pop() for _ in range(3)] == [(data[i * FB : (i + 1) * FB], []) for i in range(3)]
    assert pb.queued_ms == 0
    assert pb.pop() == (None, [])


def test_exact_frame_is_not_copied() -> None:
    pb = PlayoutBuffer(FB)
    frame = audio(FB)
    pb.push(frame)
    assert pb.pop()[0] is frame


def test_chunks_are_joined_not_padded() -> None:
    pb = PlayoutBuffer(FB)
    data = audio(2 * FB)
    pb.push(data[:100])
    pb.push(data[100:101])  # odd byte count: kept for the next push
    pb.push(data[101:333])
    pb.push(data[333:])
    assert pb.pop() == (data[:FB], [])
    assert pb.pop() == (data[FB:], [])


def test_partial_frame_is_padded_when_pop_finds_only_it() -> None:
    pb = PlayoutBuffer(FB)
    data = audio(FB + 100)
    pb.push(data)
    assert pb.queued_ms == pytest.approx((FB + 100) / FB * 20)
    assert pb.pop() == (data[:FB], [])
    frame, marks = pb.pop()
    assert frame == data[FB:] + bytes(FB - 100)
    assert marks == []
    assert pb.pop() == (None, [])


def test_odd_tail_byte_waits_for_its_partner() -> None:
    pb = PlayoutBuffer(FB)
    data = audio(2 * FB)
    pb.push(data[:101])
    # 50 whole samples are padded; the 101st byte is half a sample and stays.
    assert pb.pop()[0] == data[:100] + bytes(FB - 100)
    assert pb.queued_ms == 0
    assert pb.pop() == (None, [])
    pb.push(data[101 : 101 + FB - 1])
    # The kept byte starts the next frame, so sample alignment is unchanged.
    assert pb.pop()[0] == data[100 : 100 + FB]


def test_marks_release_after_the_frame_before_them_has_played() -> None:
    pb = PlayoutBuffer(FB)
    pb.push(audio(2 * FB))
    pb.mark("a")
    pb.push(audio(FB))
    pb.mark("b")
    pb.mark("c")
    assert pb.pending_marks == 3
    assert pb.pop()[1] == []
    assert pb.pop()[1] == []
    frame, marks = pb.pop()  # the third frame goes out; "a" is released with it
    assert frame is not None
    assert marks == ["a"]
    assert pb.pop() == (None, ["b", "c"])
    assert pb.pending_marks == 0


def test_mark_on_empty_buffer_is_released_by_next_pop() -> None:
    pb = PlayoutBuffer(FB)
    pb.mark("now")
    assert pb.pop() == (None, ["now"])
    pb.push(audio(FB))
    pb.pop()
    pb.mark("after")
    assert pb.pop() == (None, ["after"])


def test_mark_pads_a_partial_frame() -> None:
    pb = PlayoutBuffer(FB)
    data = audio(100)
    pb.push(data)
    pb.mark("end-of-utterance")
    pb.push(audio(FB, start=7))
    assert pb.pop() == (data + bytes(FB - 100), [])
    assert pb.pop() == (audio(FB, start=7), ["end-of-utterance"])


def test_clear_returns_pending_marks_in_order() -> None:
    pb = PlayoutBuffer(FB)
    pb.push(audio(FB))
    pb.mark("one")
    pb.push(audio(FB + 11))
    pb.mark("two")
    pb.push(audio(5))
    assert pb.pop()[1] == []
    assert pb.clear() == ["one", "two"]
    assert pb.queued_ms == 0
    assert pb.pop() == (None, [])
    assert pb.take_drained() is False  # a clear is not a drain
    assert pb.clear() == []


def test_drained_once_per_transition() -> None:
    pb = PlayoutBuffer(FB)
    assert pb.pop() == (None, [])
    assert pb.take_drained() is False  # never had audio
    pb.push(audio(2 * FB))
    pb.pop()
    assert pb.take_drained() is False
    pb.pop()
    assert pb.take_drained() is False  # the last frame is still playing
    assert pb.pop() == (None, [])
    assert pb.take_drained() is True
    assert pb.take_drained() is False
    pb.pop()
    assert pb.take_drained() is False  # still empty: no new transition
    pb.push(audio(10))
    pb.pop()
    pb.pop()
    assert pb.take_drained() is True


def test_large_push_is_framed_once() -> None:
    pb = PlayoutBuffer(640)
    pb.push(audio(640 * 500 + 3))  # 10 s at 16 kHz and a bit
    assert pb.queued_ms == pytest.approx(10_000 + 2 / 640 * 20)
    frames = [pb.pop()[0] for _ in range(501)]
    assert all(f is not None and len(f) == 640 for f in frames)
    assert pb.pop() == (None, [])


@pytest.mark.parametrize("frame_bytes", [0, -2, 321])
def test_bad_frame_bytes(frame_bytes: int) -> None:
    with pytest.raises(ValueError, match="frame_bytes"):
        PlayoutBuffer(frame_bytes)


# -- properties -------------------------------------------------------------------------

OPS = st.lists(
    st.one_of(
        st.tuples(st.just("push"), st.integers(0, 3 * FB + 1)),
        st.tuples(st.just("push"), st.integers(0, 9)),
        st.tuples(st.just("mark"), st.just(0)),
        st.tuples(st.just("pop"), st.just(0)),
        st.tuples(st.just("clear"), st.just(0)),
    ),
    max_size=80,
)


@settings(max_examples=400, deadline=None)
@given(ops=OPS, frame_bytes=st.sampled_from([2, 160, 320, 640]))
def test_property_against_byte_model(ops: list[tuple[str, int]], frame_bytes: int) -> None:
    """Compare with a model that only tracks byte offsets in the input stream.

    - every frame is ``frame_bytes`` long: input bytes in order, then zero padding;
    - a mark is released by exactly the first pop after all whole samples pushed before
      it have gone out, or returned by ``clear``: each exactly once, in order;
    - ``take_drained`` is true exactly on the first empty pop after a frame was played.
    """
    pb = PlayoutBuffer(frame_bytes)
    stream = bytearray()  # everything pushed
    out_pos = 0  # offset in ``stream`` of the next byte to come out
    seg_start = 0  # offset where the stream restarted (after a clear)
    pending: list[tuple[int, str]] = []  # (offset the mark needs played, name)
    released: list[str] = []
    created: list[str] = []
    armed = False

    def check_pop() -> bytes | None:
        nonlocal out_pos, armed
        due = [name for offset, name in pending if offset <= out_pos]
        frame, marks = pb.pop()
        assert marks == due
        released.extend(marks)
        del pending[: len(marks)]
        if frame is None:
            assert pb.take_drained() is armed
            armed = False
            # Nothing to play means no whole sample is queued.
            assert len(stream) - out_pos <= 1
            return None
        assert len(frame) == frame_bytes
        data = frame.rstrip(b"\x00")
        assert data == stream[out_pos : out_pos + len(data)]
        assert len(data) % 2 == 0 or len(data) == frame_bytes
        out_pos += len(data)
        armed = True
        assert pb.take_drained() is False
        return frame

    for op, n in ops:
        if op == "push":
            chunk = audio(n, start=len(stream))
            stream += chunk
            pb.push(chunk)
        elif op == "mark":
            name = f"m{len(created)}"
            created.append(name)
            whole_samples_end = seg_start + ((len(stream) - seg_start) & ~1)
            pending.append((whole_samples_end, name))
            pb.mark(name)
        elif op == "pop":
            check_pop()
        else:
            cleared = pb.clear()
            assert cleared == [name for _, name in pending]
            released.extend(cleared)
            pending.clear()
            out_pos = seg_start = len(stream)
            armed = False
            assert pb.queued_ms == 0

    # Drain: everything left comes out (but a lone odd byte), then the last marks.
    while check_pop() is not None:
        pass
    check_pop()
    assert len(stream) - out_pos == (len(stream) - seg_start) % 2
    assert released == created
    assert pb.queued_ms == 0


@settings(max_examples=200, deadline=None)
@given(
    chunks=st.lists(st.integers(0, 2000), max_size=30),
    frame_bytes=st.sampled_from([160, 320, 640]),
)
def test_property_total_out_is_total_in_rounded_up_to_frames(
    chunks: list[int], frame_bytes: int
) -> None:
    pb = PlayoutBuffer(frame_bytes)
    total = 0
    for n in chunks:
        pb.push(audio(n, start=total))
        total += n
    pb.mark("end")
    out = bytearray()
    marks: list[str] = []
    while True:
        frame, released = pb.pop()
        marks += released
        if frame is None:
            break
        out += frame
    whole = total & ~1  # a final odd byte is half a sample and never plays
    assert len(out) == math.ceil(whole / frame_bytes) * frame_bytes
    assert bytes(out[:whole]) == audio(whole)
    assert not any(out[whole:])
    assert marks == ["end"]
