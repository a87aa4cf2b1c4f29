"""Per-frame cost of the binary dialects: sln, AudioSocket, RTP (and the WS encapsulations).

One case = one 20 ms frame through one dialect call, encode (PCM16LE -> wire message)
or decode (wire message -> events). The budget for all media + dialect work of one
frame in one direction is 20 µs on the standard VM (PERFORMANCE.md), so each of these
should take a few µs.

    .venv/bin/python bench/bench_dialects_binary.py            # ~10 s
    .venv/bin/python bench/bench_dialects_binary.py --quick    # ~2 s
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._harness import Case, print_table, run_cases
from bridge.dialects._audiosocket import AudioSocketApp, AudioSocketPlatform
from bridge.dialects._encapsulated import AudioSocketWsApp, AudioSocketWsPlatform
from bridge.dialects._events import Start
from bridge.dialects._rtp import RtpSession
from bridge.dialects._sln import SlnApp, SlnPlatform

CALL = "40325ec2-5efd-4bd3-805f-53576e581d13"
PCM_8K = bytes(range(256)) + bytes(64)  # 320 B: 20 ms at 8 kHz
PCM_16K = PCM_8K * 2  # 640 B: 20 ms at 16 kHz


def _cases() -> list[Case]:
    # sln: audio is the message itself, both ways.
    sln = SlnPlatform("s", "c", 8000)
    sln_app = SlnApp()
    sln_app.receive(sln.send(Start("s", "c"))[0])

    # AudioSocket: bridge is the app role (server); Asterisk's frames come in.
    as_app = AudioSocketApp()
    as_app.receive(b"\x01\x00\x10" + bytes(16))
    as_app16 = AudioSocketApp(16000)
    as_app16.receive(b"\x01\x00\x10" + bytes(16))
    asterisk = AudioSocketPlatform(CALL)
    frame_8k = asterisk.send_audio(PCM_8K)
    frame_16k = AudioSocketPlatform(CALL, 16000).send_audio(PCM_16K)

    # RTP: one session sends, another receives.
    pcmu_tx, pcmu_rx = RtpSession("pcmu"), RtpSession("pcmu")
    pcmu_packet = pcmu_tx.send_audio(PCM_8K)
    l16_tx, l16_rx = RtpSession("l16", 16000), RtpSession("l16", 16000)
    l16_packet = l16_tx.send_audio(PCM_16K)

    # The app-leg encapsulation adds one isinstance and a method call.
    ws_platform = AudioSocketWsPlatform(CALL, "c")
    ws_app = AudioSocketWsApp()
    for message in ws_platform.send(Start(CALL, "c")):
        ws_app.receive(message)
    ws_frame = ws_platform.send_audio(PCM_8K)

    return [
        ("sln encode (send_audio, 8k)", lambda: sln.send_audio(PCM_8K)),
        ("sln decode platform (8k)", lambda: sln.receive(PCM_8K)),
        ("sln decode app (16k)", lambda: sln_app.receive(PCM_16K)),
        ("audiosocket encode 8k (app send_audio)", lambda: as_app.send_audio(PCM_8K)),
        ("audiosocket encode 16k (app send_audio)", lambda: as_app16.send_audio(PCM_16K)),
        ("audiosocket decode 8k (app receive)", lambda: as_app.receive(frame_8k)),
        ("audiosocket decode 16k (app receive)", lambda: as_app16.receive(frame_16k)),
        ("audiosocket decode 8k (platform receive)", lambda: asterisk.receive(frame_8k)),
        ("rtp pcmu encode (pcm -> packet)", lambda: pcmu_tx.send_audio(PCM_8K)),
        ("rtp pcmu decode (packet -> Audio)", lambda: pcmu_rx.receive(pcmu_packet)),
        ("rtp l16/16k encode (pcm -> packet)", lambda: l16_tx.send_audio(PCM_16K)),
        ("rtp l16/16k decode (packet -> Audio)", lambda: l16_rx.receive(l16_packet)),
        ("audiosocket-ws encode 8k (platform)", lambda: ws_platform.send_audio(PCM_8K)),
        ("audiosocket-ws decode 8k (app)", lambda: ws_app.receive(ws_frame)),
    ]


CASES: list[Case] = _cases()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="short run (~2 s)")
    args = parser.parse_args()
    print_table("binary dialects, one 20 ms frame", run_cases(CASES, quick=args.quick))
