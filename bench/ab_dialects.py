"""Per-frame encode/decode of the dialects, an older tree against this one, in ONE process.

    .venv/bin/python bench/ab_dialects.py OLD_TREE [--rounds 15]

``OLD_TREE`` holds ``bridge/`` (``git archive <rev> bridge | tar -x -C /tmp/old``). Its
package is copied under the name ``bridge_old`` (the dialects and media import each other
relatively) and both versions run the same cases, alternating case by case for
``--rounds`` rounds; each figure is a best-of-3 ``timeit`` and the table shows the medians
and the ratio new/old. Finer than ``ab_compare.py`` (no process start, no other rows in
between): meant for the few-percent question "did the per-frame cost rise?".
"""

from __future__ import annotations

import argparse
import base64
import importlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import timeit
from collections.abc import Callable, Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

PCM_8K = bytes(range(256)) + bytes(64)
PCM_16K = PCM_8K * 2


def _cases(pkg: str) -> dict[str, Callable[[], object]]:
    d = importlib.import_module(f"{pkg}.dialects")
    ev = importlib.import_module(f"{pkg}.dialects._events")
    media = importlib.import_module(f"{pkg}.media")
    twilio = importlib.import_module(f"{pkg}.dialects._twilio")
    telnyx = importlib.import_module(f"{pkg}.dialects._telnyx")
    plivo = importlib.import_module(f"{pkg}.dialects._plivo")
    asterisk = importlib.import_module(f"{pkg}.dialects._asterisk_ws")
    exotel = importlib.import_module(f"{pkg}.dialects._exotel")
    rtp = importlib.import_module(f"{pkg}.dialects._rtp")
    Start, Connected = ev.Start, ev.Connected
    cases: dict[str, Callable[[], object]] = {}

    tw_app = twilio.TwilioApp()
    tw_plat = twilio.TwilioPlatform("MZ1", "CA1", "AC1")
    for m in [*tw_plat.send(Connected()), *tw_plat.send(Start("MZ1", "CA1"))]:
        tw_app.receive(m)
    tw_media = tw_plat.send_audio(PCM_8K)
    cases["twilio app decode (media -> Audio)"] = lambda: tw_app.receive(tw_media)
    cases["twilio app encode (send_audio)"] = lambda: tw_app.send_audio(PCM_8K)

    tx_app = telnyx.TelnyxApp()
    tx_plat = telnyx.TelnyxPlatform("st", "cc", "L16", 16000)
    for m in [*tx_plat.send(Connected()), *tx_plat.send(Start("st", "cc"))]:
        tx_app.receive(m)
    chunk = [0]

    def tx_decode() -> object:
        chunk[0] += 1
        body = {"event": "media", "stream_id": "st", "media": {"chunk": str(chunk[0]), "payload": tx_payload}}
        return tx_app.receive(json.dumps(body))

    tx_payload = base64.b64encode(PCM_16K[::-1]).decode()
    cases["telnyx L16/16k app decode (incl. json.dumps)"] = tx_decode
    cases["telnyx L16/16k app encode"] = lambda: tx_app.send_audio(PCM_16K)

    pv_app = plivo.PlivoApp()
    pv_plat = plivo.PlivoPlatform("s", "c", "MA1", "audio/x-l16;rate=16000")
    pv_app.receive(pv_plat.send(Start("s", "c"))[0])
    pv_media = pv_plat.send_audio(PCM_16K)
    cases["plivo l16/16k app decode"] = lambda: pv_app.receive(pv_media)
    cases["plivo l16/16k app encode"] = lambda: pv_app.send_audio(PCM_16K)

    as_app = asterisk.AsteriskWsApp()
    as_plat = asterisk.AsteriskWsPlatform("1.1", format="slin16")
    as_app.receive(as_plat.send(Start("1.1", "1.1"))[0])
    as_ulaw_app = asterisk.AsteriskWsApp()
    as_ulaw_plat = asterisk.AsteriskWsPlatform("1.2", format="ulaw")
    as_ulaw_app.receive(as_ulaw_plat.send(Start("1.2", "1.2"))[0])
    ulaw = media.PCMU.encode(PCM_8K)
    cases["asterisk_ws slin16 app decode"] = lambda: as_app.receive(PCM_16K)
    cases["asterisk_ws slin16 app encode"] = lambda: as_app.send_audio(PCM_16K)
    cases["asterisk_ws ulaw app decode"] = lambda: as_ulaw_app.receive(ulaw)
    cases["asterisk_ws ulaw app encode"] = lambda: as_ulaw_app.send_audio(PCM_8K)
    cases["asterisk_ws slin16 platform decode"] = lambda: as_plat.receive(PCM_16K)

    ex_app = exotel.ExotelApp(min_chunk_bytes=320)
    ex_plat = exotel.ExotelPlatform("st", "ca", "ac", sample_rate=16000)
    for m in [*ex_plat.send(Connected()), *ex_plat.send(Start("st", "ca"))]:
        ex_app.receive(m)
    ex_media = ex_plat.send_audio(PCM_16K)
    cases["exotel 16k app decode"] = lambda: ex_app.receive(ex_media)
    cases["exotel 16k app encode"] = lambda: ex_app.send_audio(PCM_16K)

    tx_rtp, rx_rtp = rtp.RtpSession("pcmu", ssrc=1), rtp.RtpSession("pcmu")
    packet = tx_rtp.send_audio(PCM_8K)
    cases["rtp pcmu encode"] = lambda: tx_rtp.send_audio(PCM_8K)
    cases["rtp pcmu decode"] = lambda: rx_rtp.receive(packet)
    _ = d  # the package face imports cleanly too
    return cases


def _load_old(tree: str) -> str:
    tmp = tempfile.mkdtemp(prefix="bridge-old-")
    shutil.copytree(os.path.join(tree, "bridge"), os.path.join(tmp, "bridge_old"))
    sys.path.insert(0, tmp)
    return "bridge_old"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old")
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args(argv)
    old = _cases(_load_old(args.old))
    new = _cases("bridge")
    results: dict[str, tuple[list[float], list[float]]] = {k: ([], []) for k in new if k in old}
    for _ in range(args.rounds):
        for key, (a, b) in results.items():
            for fn, into in ((old[key], a), (new[key], b)):
                into.append(min(timeit.repeat(fn, number=5000, repeat=3)) / 5000 * 1e9)
    width = max(len(k) for k in results)
    print(f"median of {args.rounds} alternating rounds, ns per frame")
    print(f"{'case':<{width}}  {'old':>7}  {'new':>7}  new/old")
    for key, (a, b) in results.items():
        ma, mb = statistics.median(a), statistics.median(b)
        print(f"{key:<{width}}  {ma:7.0f}  {mb:7.0f}  {mb / ma:7.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


