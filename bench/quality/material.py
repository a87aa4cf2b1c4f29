"""Test material of the media-quality rig: speech, tones and sweeps.

Speech is made by ``espeak-ng`` and ``sox`` (Debian packages, installed by
``scripts/install-system-deps``) and **committed** in ``bench/quality/material/``, so a
run on a machine with another espeak-ng version measures the same audio. Regenerate with

    .venv/bin/python -m bench.quality.material        # rewrites material/*.wav

which runs exactly the commands in :data:`COMMANDS` (also printed, and written to
``material/README.md``). The sentences are Harvard sentences (IEEE 1969, public domain),
spoken by espeak-ng's en-us voice at 155 words/min, joined with 400 ms pauses (and 300
ms of lead-in), then for each rate: sox resampled (its default, very high quality
resampler), band-limited to the channel (8 kHz: 100-3400 Hz, the telephone band; 16
kHz: 50-7000 Hz; 24 kHz: 50-11000 Hz) and normalised to -3 dBFS peak.

Tones and sweeps are generated in code (numpy, exact), never stored.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import wave
from pathlib import Path

import numpy as np

__all__ = [
    "COMMANDS",
    "RATES",
    "SENTENCES",
    "multitone_steps",
    "speech",
    "sweep",
    "tone",
]

HERE = Path(__file__).resolve().parent / "material"
RATES = (8000, 16000, 24000)
SENTENCES = (
    "The birch canoe slid on the smooth planks.",
    "Glue the sheet to the dark blue background.",
    "It is easy to tell the depth of a well.",
)
_BAND = {8000: "100-3400", 16000: "50-7000", 24000: "50-11000"}


COMMANDS = (
    "espeak-ng -v en-us -s 155 -w s$i.wav '<sentence i>'     # for each sentence\n"
    "sox s$i.wav p$i.wav pad 0 0.4                            # 400 ms pause after each\n"
    "sox p0.wav p1.wav p2.wav joined.wav pad 0.3 0            # 300 ms lead-in\n"
    "sox joined.wav -b 16 -r 8000  speech-8k.wav  sinc 100-3400 norm -3\n"
    "sox joined.wav -b 16 -r 16000 speech-16k.wav sinc 50-7000  norm -3\n"
    "sox joined.wav -b 16 -r 24000 speech-24k.wav sinc 50-11000 norm -3\n"
)


def _commands(tmp: str) -> list[list[str]]:
    """Exactly :data:`COMMANDS`, in ``tmp`` (the WAVs go to ``material/``)."""
    n = len(SENTENCES)
    cmds = [["espeak-ng", "-v", "en-us", "-s", "155", "-w", f"{tmp}/s{i}.wav", text]
            for i, text in enumerate(SENTENCES)]  # fmt: skip
    cmds += [["sox", f"{tmp}/s{i}.wav", f"{tmp}/p{i}.wav", "pad", "0", "0.4"] for i in range(n)]
    cmds.append(["sox", *[f"{tmp}/p{i}.wav" for i in range(n)], f"{tmp}/joined.wav", "pad", "0.3", "0"])
    for rate in RATES:
        cmds.append(["sox", f"{tmp}/joined.wav", "-b", "16", "-r", str(rate),
                     str(HERE / f"speech-{rate // 1000}k.wav"), "sinc", _BAND[rate], "norm", "-3"])  # fmt: skip
    return cmds


def make() -> None:
    """Regenerate ``material/speech-*.wav`` with espeak-ng and sox."""
    for tool in ("espeak-ng", "sox"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is missing: run scripts/install-system-deps")
    HERE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for cmd in _commands(tmp):
            print(" ".join(cmd))
            subprocess.run(cmd, check=True)
    versions = []
    for tool in (["espeak-ng", "--version"], ["sox", "--version"]):
        out = subprocess.run(tool, capture_output=True, text=True).stdout.strip()
        versions.append(out.splitlines()[0] if out else tool[0])
    (HERE / "README.md").write_text(
        "# Speech material of the media-quality rig\n\n"
        "Made by `python -m bench.quality.material` (see `bench/quality/material.py`) with\n\n"
        + "".join(f"- {v}\n" for v in versions)
        + "\nSentences (Harvard sentences, IEEE 1969):\n\n"
        + "".join(f"{i}. {s}\n" for i, s in enumerate(SENTENCES, 1))
        + "\nCommands:\n\n```sh\n"
        + COMMANDS
        + "```\n"
    )


def _read_wav(path: Path) -> tuple[np.ndarray, int]:
    with wave.open(str(path), "rb") as w:
        if w.getsampwidth() != 2 or w.getnchannels() != 1:
            raise ValueError(f"{path}: expected PCM16 mono")
        data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float64)
        return data, w.getframerate()


def speech(rate: int) -> np.ndarray:
    """The committed speech at ``rate`` Hz (8000, 16000 or 24000) as float samples in
    PCM16 units (-32768..32767)."""
    if rate not in RATES:
        raise ValueError(f"no speech material at {rate} Hz (have {RATES})")
    data, got = _read_wav(HERE / f"speech-{rate // 1000}k.wav")
    assert got == rate
    return data


def tone(rate: int, hz: float, seconds: float, dbfs: float = -6.0) -> np.ndarray:
    """A sine at ``dbfs`` peak, PCM16 units."""
    n = round(rate * seconds)
    amp = 32767.0 * 10 ** (dbfs / 20)
    return amp * np.sin(2 * np.pi * hz * np.arange(n) / rate)


def sweep(rate: int, f0: float, f1: float, seconds: float, dbfs: float = -6.0) -> np.ndarray:
    """A logarithmic sine sweep from ``f0`` to ``f1`` Hz."""
    n = round(rate * seconds)
    t = np.arange(n) / rate
    k = np.log(f1 / f0)
    phase = 2 * np.pi * f0 * seconds / k * (np.exp(t / seconds * k) - 1)
    return 32767.0 * 10 ** (dbfs / 20) * np.sin(phase)


def multitone_steps(rate: int, freqs: tuple[float, ...], step_s: float, dbfs: float = -10.0) -> np.ndarray:
    """Tones one after another, ``step_s`` each (a stepped sweep: each level is measured
    on the middle of its step, away from any transition)."""
    return np.concatenate([tone(rate, f, step_s, dbfs) for f in freqs])


if __name__ == "__main__":
    make()
