"""The media-quality rig (``make quality``): drives a real ``bridge run`` under seeded
impairments and judges the audio that comes back objectively (PESQ against a codec-only
reference, cross-correlation, added latency per frame under serial playout, frames
fabricated and lost, time to recover, SNR, pass band, aliasing).

* :mod:`.material`: speech (espeak-ng + sox, committed), tones and sweeps;
* :mod:`.impair`: pure, seeded send schedules (burst, stall, jitter, loss, dup, reorder,
  freeze);
* :mod:`.metrics`: pure numpy measures, each unit-tested on synthetic signals;
* :mod:`.rig`: the daemon, the emulated callers and the app server (Trio);
* :mod:`.run`: the matrix, the verdicts, JSON / Markdown / plot (``python -m
  bench.quality.run``).

``docs/audio-quality.md`` explains the method and the results.
"""
