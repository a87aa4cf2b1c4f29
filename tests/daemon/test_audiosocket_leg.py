"""AudioSocket call leg end to end with real sockets, through the built-in echo."""

from __future__ import annotations

import itertools
import struct
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio

from .asclient import AudioSocketCaller
from .conftest import make_config


def numbered(n: int) -> bytes:
    return struct.pack("<h", n + 1) * 160


@pytest.mark.parametrize("read_poller", [True, False], ids=["poller", "reader-tasks"])
async def test_echo_round_trip_paced_and_complete(
    daemon_factory: Any, tmp_path: Path, read_poller: bool
) -> None:
    config = make_config(tmp_path)
    config = msgspec.structs.replace(
        config, daemon=msgspec.structs.replace(config.daemon, read_poller=read_poller)
    )
    with trio.fail_after(15):
        daemon = await daemon_factory(config)
        host, port = daemon.bound["audiosocket"]
        caller = await AudioSocketCaller.connect(host, port)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(caller.receive_forever)
            for n in range(100):
                await caller.send_frame(numbered(n))
                await trio.sleep(0.02)
            await trio.sleep(0.3)
            live = daemon.live_streams()
            assert len(live) == 1 and live[0]["state"] == "streaming"
            if read_poller:
                # The call leg is read in poll mode: one poller wake-up per frame or fewer.
                assert daemon.poller is not None and daemon.poller.registered == 1
                assert daemon.poller.dispatched >= 50
            else:
                assert daemon.poller is None  # a reader task per leg, as before
            await caller.aclose()
        # The stream ends with call_hangup and leaves a record.
        with trio.fail_after(5):
            while daemon.manager.live_count:
                await trio.sleep(0.01)
        stream_id = live[0]["stream_id"]
        assert daemon.store is not None
        await daemon.store.flush()
        record = await daemon.get_stream(stream_id)
    assert record is not None and record["reason"] == "call_hangup"
    assert record["frames_in"] == 100
    echoed = [struct.unpack_from("<h", pcm)[0] - 1 for _, pcm in caller.received if any(pcm)]
    assert echoed == list(range(100))  # every frame back, once, in order, sample-exact
    if daemon.poller is not None:
        assert daemon.poller.registered == 0  # the stream's registration ended with it
    # Its paced frames are in the process-wide lateness histogram (/metrics).
    assert daemon.metrics.lateness_total.count >= 100
    times = [t for t, pcm in caller.received]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    gaps.sort()
    # Paced: the median gap is the ptime (arrival jitter on a loaded 2-core VM aside).
    assert abs(gaps[len(gaps) // 2] - 0.02) < 0.003


async def test_first_frame_timeout_and_garbage_do_not_disturb(daemon_factory: Any, tmp_path: Path) -> None:
    with trio.fail_after(15):
        daemon = await daemon_factory(make_config(tmp_path))
        host, port = daemon.bound["audiosocket"]
        silent = await trio.open_tcp_stream(host, port)  # never sends its UUID
        garbage = await trio.open_tcp_stream(host, port)
        await garbage.send_all(b"\x10\x00\x05hello")  # audio before the UUID
        assert await garbage.receive_some(10) == b""  # closed by bridge
        with trio.fail_after(3):
            assert await silent.receive_some(10) == b""  # dropped after 1 s
        assert daemon.manager.live_count == 0
