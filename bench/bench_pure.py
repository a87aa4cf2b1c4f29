"""All media and dialect work per 20 ms frame, in one run: the issue-3 budget table.

    .venv/bin/python bench/bench_pure.py [--quick]

Prints every operation of bench_media, bench_dialects_binary and bench_dialects_carriers,
then whole one-direction pipelines as the stream engine runs them (decode, resample,
playout/jitter buffer and pacing, encode) against the budget of 20 µs per frame per
direction on this machine. The resampler alone, at every pair of 8, 16, 22.05, 24, 44.1
and 48 kHz (bench_media's cases), is held to the same 20 µs. WebSocket framing and
syscalls are I/O, measured in bench_websocket.py, and not part of this budget.
"""

from __future__ import annotations

import argparse
import os
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import bench_dialects_binary, bench_dialects_carriers, bench_media
from bench._harness import Case, print_table, run_cases
from bridge.dialects import (
    AudioSocketApp,
    AudioSocketPlatform,
    RtpSession,
    SlnPlatform,
    Start,
    TwilioApp,
    TwilioPlatform,
)
from bridge.media import JitterBuffer, PacingClock, PlayoutBuffer, Resampler

BUDGET_US = 20.0


def _pcm(rate: int) -> bytes:
    n = rate // 50
    return b"".join(struct.pack("<h", (i * 37) % 2000 - 1000) for i in range(n))


def pipelines() -> list[Case]:
    cases: list[Case] = []
    pcm8 = _pcm(8000)
    call_uuid = "6ba7b810-9dad-11d1-80b4-00c04fd430c8"

    # Uplink: AudioSocket 8 kHz -> sln at 8 and 16 kHz.
    for app_rate in (8000, 16000):
        asterisk = AudioSocketPlatform(call_uuid)
        wire = asterisk.send_audio(pcm8)
        server = AudioSocketApp()
        server.receive(b"\x01\x00\x10" + bytes(16))
        rs = Resampler(8000, app_rate)
        sln = SlnPlatform("s", "c", app_rate)

        def up(server=server, wire=wire, rs=rs, sln=sln) -> object:  # type: ignore[no-untyped-def]
            (ev,) = server.receive(wire)
            return sln.send_audio(rs.process(ev.frame.pcm))

        cases.append((f"uplink  audiosocket 8k -> sln {app_rate // 1000}k", up))

    # Uplink: Twilio (bridge is the app side) -> sln 16 kHz.
    tw_platform = TwilioPlatform("MZ1", "CA1", "AC1")
    tw_app = TwilioApp()
    for msg in tw_platform.send(Start("MZ1", "CA1")):
        tw_app.receive(msg)
    tw_wire = tw_platform.send_audio(pcm8)
    rs_tw = Resampler(8000, 16000)
    sln16 = SlnPlatform("s", "c", 16000)

    def up_twilio() -> object:
        (ev,) = tw_app.receive(tw_wire)
        return sln16.send_audio(rs_tw.process(ev.frame.pcm))

    cases.append(("uplink  twilio pcmu -> sln 16k", up_twilio))

    # Uplink: RTP PCMU through the jitter buffer -> sln 8 kHz.
    sender, receiver = RtpSession("pcmu"), RtpSession("pcmu")
    jb = JitterBuffer(8000, start_ms=20)
    sln8 = SlnPlatform("s", "c", 8000)
    packets = [sender.send_audio(pcm8) for _ in range(4096)]
    idx = [0]
    now = [0.0]

    def up_rtp() -> object:
        i = idx[0] = (idx[0] + 1) % 4096
        if i == 0:
            jb.reset()
        now[0] += 0.02  # packets arrive on time (the jitter buffer has its own clock)
        for ev in receiver.receive(packets[i]):
            jb.push(ev.seq, ev.timestamp, receiver.last_ssrc, ev.frame.pcm, now[0])  # type: ignore[union-attr]
        out = jb.pop(now[0])
        return sln8.send_audio(out) if out else None

    cases.append(("uplink  rtp pcmu + jitter buffer -> sln 8k", up_rtp))

    # Downlink: sln -> playout + pacing -> AudioSocket / Twilio (24 kHz: TTS to a call).
    downlinks = ((8000, "audiosocket 8k"), (16000, "audiosocket 8k"), (24000, "audiosocket 8k"))
    for app_rate, leg in (*downlinks, (16000, "twilio")):
        sln_in = SlnPlatform("s", "c", app_rate)
        down_rs = Resampler(app_rate, 8000)
        playout = PlayoutBuffer(320)
        clock = PacingClock(origin_s=0.0)
        t = [0.0]
        pcm = _pcm(app_rate)
        if leg == "twilio":
            enc = tw_app.send_audio
        else:
            srv = AudioSocketApp()
            enc = srv.send_audio

        def down(
            sln_in=sln_in, down_rs=down_rs, playout=playout, clock=clock, t=t, pcm=pcm, enc=enc
        ) -> object:  # type: ignore[no-untyped-def]
            (ev,) = sln_in.receive(pcm)
            playout.push(down_rs.process(ev.frame.pcm))
            t[0] += 0.02
            for _ in range(clock.due(t[0])):
                frame, _marks = playout.pop()
                enc(frame or b"\x00" * 320)
            return None

        cases.append((f"downlink sln {app_rate // 1000}k -> playout+pacing -> {leg}", down))
    return cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    media = run_cases(bench_media.CASES, quick=args.quick)
    print_table("media", media)
    resample = [(label, ns) for label, ns in media if label.endswith("(Resampler)")]
    label, ns = max(resample, key=lambda row: row[1])
    verdict = "within" if ns / 1000 <= BUDGET_US else "OVER"
    print(
        f"\nResampler, worst of {len(resample)} rate pairs: {label.split()[1]}"
        f" {ns / 1000:.1f} µs per frame: {verdict} the {BUDGET_US:g} µs budget"
    )
    print_table("dialects: binary", run_cases(bench_dialects_binary.CASES, quick=args.quick))
    print_table("dialects: carriers", run_cases(bench_dialects_carriers.CASES, quick=args.quick))
    rows = run_cases(pipelines(), quick=args.quick)
    print_table("whole pipelines, one direction, one 20 ms frame", rows)
    worst = max(ns for _, ns in rows) / 1000
    verdict = "within" if worst <= BUDGET_US else "OVER"
    print(
        f"\nworst pipeline {worst:.1f} µs per frame per direction: {verdict} the {BUDGET_US:g} µs budget"
    )


if __name__ == "__main__":
    main()
