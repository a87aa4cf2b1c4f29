"""App audio at a rate other than the route's is resampled with its history kept."""

from __future__ import annotations

import math

import numpy as np
import trio
import trio.testing

from bridge.dialects import Audio
from bridge.media import Frame, Resampler

from .fakes import FakeAppConnection, FakeCallLeg, ScriptedConnector
from .test_stream import clock, run_stream

__all__ = ["clock"]  # the fixture, used by name


def sine_frame(rate: int, n: int, freq: float = 1000.0) -> bytes:
    """Frame ``n`` (20 ms) of one continuous sine at ``rate``."""
    size = rate // 50
    t = np.arange(n * size, (n + 1) * size) / rate
    return np.rint(8000 * np.sin(2 * np.pi * freq * t)).astype(np.int16).tobytes()  # type: ignore[no-any-return]


async def test_app_audio_at_another_rate_is_resampled_continuously(
    clock: trio.testing.MockClock,
) -> None:
    # The route says 8 kHz, the app sends 16 kHz frames anyway: they are resampled to
    # the call's rate by one resampler that keeps its filter history from frame to
    # frame. A new resampler per message starts every frame from silence: a click
    # every 20 ms (measured: 20 dB SNR instead of 70).
    call = FakeCallLeg()
    conn = FakeAppConnection()
    async with trio.open_nursery() as nursery:
        stream, _, _ = await run_stream(nursery, call, ScriptedConnector([conn]))
        await trio.sleep(0.1)
        for n in range(50):
            conn.feed(Audio(Frame(sine_frame(16000, n), 16000)))
            await trio.sleep(0.02)
        await trio.sleep(0.2)
        call.hang_up()
        await stream.closed_event.wait()
        nursery.cancel_scope.cancel()
    frames = [pcm for _, pcm in call.sent]
    first = next(i for i, pcm in enumerate(frames) if any(pcm))  # silence before the app
    y = np.frombuffer(b"".join(frames[first : first + 40]), np.int16).astype(float)
    # The same sine at 8 kHz, delayed by the resampler's (whole-sample) delay.
    delay = Resampler(16000, 8000).delay_s
    t = np.arange(len(y)) / 8000 - delay
    ref = 8000 * np.sin(2 * np.pi * 1000.0 * np.maximum(t, 0)) * (t >= 0)
    keep = slice(160, None)  # past the filter's start from silence
    noise = float(((y[keep] - ref[keep]) ** 2).sum())
    snr = 10 * math.log10(float((ref[keep] ** 2).sum()) / max(noise, 1e-9))
    assert snr >= 60
