"""WAV helpers: round trip, stereo down-mix, clear errors for other formats."""

from __future__ import annotations

import array
import wave
from pathlib import Path

import pytest

from bridge.media import read_wav, write_wav


@pytest.mark.parametrize("rate", [8000, 16000, 24000, 48000, 44100])
def test_round_trip(tmp_path: Path, rate: int) -> None:
    pcm = array.array("h", [0, 1, -1, 32767, -32768, 1234]).tobytes() * 50
    path = tmp_path / "x.wav"
    write_wav(path, pcm, rate)
    with wave.open(str(path), "rb") as wav:  # what any other reader sees
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (1, 2, rate)
    assert read_wav(path) == (pcm, rate)
    assert read_wav(str(path)) == (pcm, rate)


def test_stereo_is_down_mixed(tmp_path: Path) -> None:
    left = [1000, -2000, 30000, 0, -1]
    right = [3000, -4000, 30000, 1, 0]
    frames = array.array("h", [s for pair in zip(left, right, strict=True) for s in pair])
    path = tmp_path / "stereo.wav"
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(2)
        wav.setsampwidth(2)
        wav.setframerate(16000)
        wav.writeframes(frames.tobytes())
    pcm, rate = read_wav(path)
    assert rate == 16000
    # The mean of the two channels; audioop.tomono rounds 0.5*L + 0.5*R down (floor).
    assert array.array("h", pcm).tolist() == [
        (a + b) // 2 for a, b in zip(left, right, strict=True)
    ]


def test_8_bit_rejected(tmp_path: Path) -> None:
    path = tmp_path / "u8.wav"
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(1)
        wav.setframerate(8000)
        wav.writeframes(bytes(100))
    with pytest.raises(ValueError, match="8-bit"):
        read_wav(path)


def test_three_channels_rejected(tmp_path: Path) -> None:
    path = tmp_path / "3ch.wav"
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(3)
        wav.setsampwidth(2)
        wav.setframerate(8000)
        wav.writeframes(bytes(60))
    with pytest.raises(ValueError, match="3 channels"):
        read_wav(path)


def test_not_a_wav_file(tmp_path: Path) -> None:
    path = tmp_path / "junk.wav"
    path.write_bytes(b"ID3\x03 definitely an mp3")
    with pytest.raises(ValueError, match=r"junk\.wav"):
        read_wav(path)


def test_float_wav_rejected(tmp_path: Path) -> None:
    # A minimal IEEE-float (format tag 3) header: the wave module refuses it.
    fmt = (3).to_bytes(2, "little") + (1).to_bytes(2, "little") + (8000).to_bytes(4, "little")
    fmt += (32000).to_bytes(4, "little") + (4).to_bytes(2, "little") + (32).to_bytes(2, "little")
    body = (
        b"WAVE"
        + b"fmt "
        + len(fmt).to_bytes(4, "little")
        + fmt
        + b"data"
        + (0).to_bytes(4, "little")
    )
    path = tmp_path / "float.wav"
    path.write_bytes(b"RIFF" + len(body).to_bytes(4, "little") + body)
    with pytest.raises(ValueError, match=r"float\.wav"):
        read_wav(path)


def test_write_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="16-bit"):
        write_wav(tmp_path / "a.wav", b"\x00", 8000)
    with pytest.raises(ValueError, match="sample_rate"):
        write_wav(tmp_path / "b.wav", b"\x00\x00", 0)
