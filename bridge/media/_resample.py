"""Streaming, band-limited sample-rate conversion of PCM16 mono (numpy polyphase FIR).

Chosen by measurement against ``soxr`` (every quality), libsamplerate (``samplerate``),
scipy and the old ``audioop.ratecv``: see docs/audio-quality.md, "Resampler". In short:
soxr's filtering qualities hold 59-118 ms back and release it in bursts (its QQ is
cubic interpolation with no anti-alias filter), libsamplerate costs 40-570 µs per 20 ms
frame, scipy's upfirdn 30-50 µs, and ratecv (linear interpolation) aliases a 6 kHz tone
at 16 kHz into a full-level 2 kHz tone at 8 kHz. This one releases every output sample
as soon as the input it needs has arrived, delays by under 2 ms, and costs 3-11 µs per
20 ms frame.

The filter: a Kaiser-windowed sinc, linear phase, cut off at the lower of the two
Nyquist frequencies, designed once per rate pair (cached) as a continuous function of
time and sampled at every phase the pair needs. The passband is flat (±0.003 dB) to
3.4 kHz when either side is 8 kHz, 7 kHz when the lower side is 16 kHz, and 85 % of the
lower Nyquist otherwise; the stopband starts as far above the Nyquist frequency as the
passband ends below it (4.6 kHz for 8 kHz, 9 kHz for 16 kHz), so whatever aliases or
images lands above the passband, and is ``STOPBAND_DB`` down.

How it computes (why it is cheap in Python): for in/out = M/L in lowest terms, output j
is a dot product of the K input samples before it with the filter phase (j·M mod L).
For a chunk of whole periods (every 20 ms frame at the usual rates) the outputs of a
block of periods are one dense matrix (shared by every block, built once per pair)
times the block's input window, so a frame is one strided view of the input and one
BLAS matrix product: a fixed handful of numpy calls per frame whatever the ratio.
Blocks span about one filter length: fewer periods per block means more overlapping
windows to copy, more means a wider matrix of mostly zeros. Other chunk sizes take a
general path (gather the windows, multiply each by its output's phase); rate pairs with
more than ``_MAX_PHASES`` phases interpolate between a table of that many.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import attrs
import numpy as np
from numpy.lib.stride_tricks import as_strided

__all__ = ["MAX_RATE_HZ", "STOPBAND_DB", "Resampler"]

#: Attenuation of everything that aliases or images into the output, in dB (the Kaiser
#: design target; measured figures in docs/audio-quality.md).
STOPBAND_DB = 70.0

# Passband edge by lower rate: the telephone band at 8 kHz, wide-band speech at 16 kHz.
_PASSBAND_HZ = {8000: 3400.0, 16000: 7000.0}
_PASSBAND_SHARE = 0.85  # of the lower Nyquist frequency, for other rates

# Rate pairs whose reduced ratio needs more phases than this (exotic WAV rates such as
# 44056 Hz) interpolate linearly between this many: the coefficient error is ~1e-7.
_MAX_PHASES = 1024
# The block matrix of the fast path is at most this many floats (780 KiB; the largest
# at the usual rates, 16k <-> 22.05k, is 157k): measured 2-3x cheaper than gathering
# the windows even at that size. Rates whose block would be larger take the gather path.
_BLOCK_MAX_FLOATS = 200_000
# One matrix product is kept under OpenBLAS's threshold for using its threads (m*n*k
# <= 65536 * 4): threads would spin on another core for a few µs of work.
_BLAS_MAX_MNK = 1 << 18
# Longer chunks (a whole WAV file) are processed in pieces of about this many samples, so
# the gathered windows stay small.
_PIECE_SAMPLES = 4096
_PLAN_CACHE = 16
_PLAN_CACHE_MAX_FLOATS = 65536  # larger gather plans are computed each time

try:  # the clip ufunc itself: np.clip's Python wrapper costs ~2 µs more per call
    from numpy._core.umath import clip as _clip  # type: ignore[attr-defined,unused-ignore]
except ImportError:  # numpy 1.x
    from numpy.core.umath import clip as _clip  # type: ignore[attr-defined,no-redef,unused-ignore]
_LO, _HI = np.float32(-32768.0), np.float32(32767.0)
_PCM16 = np.dtype("<i2")  # Frame's byte order on any host


def _passband_hz(in_rate: int, out_rate: int) -> float:
    low = min(in_rate, out_rate)
    return _PASSBAND_HZ.get(low, _PASSBAND_SHARE * low / 2)


class _Plan:
    """How to compute one chunk of ``n`` input samples that starts at phase ``t0``."""

    __slots__ = ("block", "coeffs", "count", "starts", "t0_next")

    def __init__(
        self,
        count: int,
        t0_next: int,
        block: np.ndarray[Any, Any] | None,
        starts: np.ndarray[Any, Any] | None,
        coeffs: np.ndarray[Any, Any] | None,
    ) -> None:
        self.count = count
        self.t0_next = t0_next
        self.block = block  # ((M+K-1) x L) matrix: one period of outputs per window row
        self.starts = starts  # window start of each output (the gather path)
        self.coeffs = coeffs  # filter phase of each output, (count x K)


class _Design:
    """The filter of one rate pair, its polyphase table and per-chunk plans (shared)."""

    def __init__(self, in_rate: int, out_rate: int) -> None:
        g = math.gcd(in_rate, out_rate)
        self.L = L = out_rate // g  # outputs per period
        self.M = M = in_rate // g  # inputs per period
        nyquist = min(in_rate, out_rate) / 2
        passband = _passband_hz(in_rate, out_rate)
        width_hz = 2 * (nyquist - passband)  # transition band, centred on the Nyquist
        # Kaiser's formulas (Oppenheim & Schafer 7.6): length for the attenuation and
        # transition width, beta for the attenuation. Length in input samples.
        a = STOPBAND_DB
        span = (a - 7.95) / (2.285 * 2 * math.pi * width_hz / in_rate)
        K = math.ceil(span) + 1
        # A delay of K/2 input samples that is also whole at the output rate where that
        # is cheap (integer and small ratios): round K up to a multiple of 2M.
        step = 2 * M if 4 * M <= K else 2
        self.K = K = -(-K // step) * step
        beta = 0.1102 * (a - 8.7)
        self.delay_s = K / 2 / in_rate  # linear phase: the centre of the window
        self.P = P = L if L <= _MAX_PHASES else _MAX_PHASES
        # Row p, column k' holds the filter at tau = p/P + (K-1-k') input samples, so a
        # window of the K newest samples, oldest first, dotted with row p is the output
        # p/P of a sample after the newest. Row P (only used to interpolate) is row 0
        # one sample later.
        tau = np.arange(P + 1)[:, None] / P + (K - 1 - np.arange(K))[None, :]
        centre = K / 2
        cutoff = 2 * nyquist / in_rate  # cycles per input sample x 2
        h = cutoff * np.sinc(cutoff * (tau - centre))
        h *= np.i0(beta * np.sqrt(np.clip(1 - ((tau - centre) / centre) ** 2, 0, 1))) / np.i0(beta)
        # Each phase passes DC at exactly unity gain: no ripple at the period frequency.
        h /= h.sum(axis=1, keepdims=True)
        self.table = h.astype(np.float32)
        self._plans: dict[tuple[int, int], _Plan] = {}
        self._blocks: dict[int, np.ndarray[Any, Any]] = {}  # by periods per block

    @property
    def exact(self) -> bool:
        return self.P == self.L

    def count(self, n: int, t0: int) -> int:
        """Outputs a chunk of ``n`` inputs completes, starting ``t0``/L into it."""
        return max(0, -(-(n * self.L - t0) // self.M))

    def coefficients(self, t: np.ndarray[Any, Any]) -> tuple[Any, Any]:
        """Window starts and filter rows for output positions ``t`` (units of 1/L input)."""
        L = self.L
        starts = t // L
        if self.exact:
            return starts, self.table[t % L]
        pos = (t % L) * (self.P / L)
        p = pos.astype(np.int64)
        frac = (pos - p).astype(np.float32)[:, None]
        table = self.table
        return starts, table[p] * (1 - frac) + table[p + 1] * frac

    def block_periods(self, n: int) -> int:
        """Periods per block for a chunk of ``n`` inputs (whole periods), 0 for none.

        Few periods per block means many overlapping windows to copy out for BLAS; many
        means a wider matrix, mostly zeros. A block spanning about one filter length
        balances the two (measured: 3-5x cheaper than one period per block at 16->8
        and 48->16).
        """
        L, M, K = self.L, self.M, self.K
        periods = n // M
        best = 0
        for p in range(1, periods + 1):
            if periods % p or (p * M + K - 1) * p * L > _BLOCK_MAX_FLOATS:
                continue
            if p * M > max(K, M):
                break
            best = p
        return best

    def plan(self, n: int, t0: int) -> _Plan:
        key = (n, t0)
        plan = self._plans.get(key)
        if plan is not None:
            return plan
        L, M, K = self.L, self.M, self.K
        count = self.count(n, t0)
        t0_next = t0 + count * M - n * L
        block = None
        starts = coeffs = None
        periods = self.block_periods(n) if self.exact and t0 == 0 and n % M == 0 else 0
        if periods:
            block = self._blocks.get(periods)
            if block is None:
                # A block of `periods` periods: output r sits r*M/L inputs into the
                # block's window of periods*M + K - 1 samples. One matrix for every block.
                outs = periods * L
                block = np.zeros((periods * M + K - 1, outs), np.float32)
                t = np.arange(outs) * M
                for r, (s, p) in enumerate(zip(t // L, t % L, strict=True)):
                    block[s : s + K, r] = self.table[p]
                self._blocks[periods] = block
        else:
            starts, coeffs = self.coefficients(t0 + M * np.arange(count, dtype=np.int64))
        plan = _Plan(count, t0_next, block, starts, coeffs)
        if len(self._plans) < _PLAN_CACHE and (
            coeffs is None or coeffs.size <= _PLAN_CACHE_MAX_FLOATS
        ):
            self._plans[key] = plan
        return plan


@functools.lru_cache(maxsize=64)
def _design(in_rate: int, out_rate: int) -> _Design:
    return _Design(in_rate, out_rate)


#: Highest rate accepted: the filter's length grows with the ratio (at 768 kHz to 8 kHz
#: it is 2,800 taps), so absurd rates from a file are refused, not computed.
MAX_RATE_HZ = 768_000


def _valid_rate(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if not 0 < value <= MAX_RATE_HZ:
        raise ValueError(f"{attribute.name} must be between 1 and {MAX_RATE_HZ} Hz, not {value!r}")


# Validators run in __init__ only: attrs' default on_setattr hooks would put a Python
# call on every attribute store of the per-frame path.
@attrs.define(slots=True, on_setattr=attrs.setters.NO_OP)
class Resampler:
    """Converts a stream of PCM16 mono chunks from ``in_rate`` to ``out_rate`` Hz.

    Band-limited (see the module docstring for the filter), state kept between calls, so
    chunks of any size can be fed one at a time with no clicks at their edges. Tested at
    every pair of 8, 16, 22.05, 24, 44.1 and 48 kHz; any rate up to ``MAX_RATE_HZ`` works.

    Delay: the output is the input delayed by ``delay_s`` (linear phase, so the same at
    every frequency): 1.875 ms when the lower rate is 8 kHz, 1.125 ms at 16 kHz, less
    above; a whole number of samples at both rates for integer ratios and 16 <-> 24 kHz.
    The first ``delay_s`` of output after construction or ``reset()`` is the filter
    filling from silence.

    Output length: every output sample is released as soon as the input it needs has
    arrived; nothing is held back to make blocks. After ``n`` input samples in total the
    output is ``ceil(n * out_rate / in_rate)`` samples, so a 20 ms frame in gives exactly
    20 ms out at the rates above, from the first frame on, and any chunking stays within
    one sample of ``n * out_rate / in_rate``. Samples beyond full scale (the filter's
    overshoot on clipped input) are clipped.

    When ``in_rate == out_rate``, ``process`` returns its argument itself (no copy).
    """

    in_rate: int = attrs.field(validator=_valid_rate)
    out_rate: int = attrs.field(validator=_valid_rate)
    _design: _Design | None = attrs.field(init=False, repr=False)
    # Input history (K-1 samples) followed by room for the current chunk, as float32.
    _buf: np.ndarray[Any, Any] = attrs.field(init=False, repr=False)
    # Position of the next output in the next chunk, in units of 1/L input samples.
    _t0: int = attrs.field(default=0, init=False, repr=False)
    # Per chunk size that is whole periods: views of _buf and the block matrix, so that
    # a steady stream of frames makes no Python objects beyond the numpy results.
    _fast: dict[int, tuple[Any, ...]] = attrs.field(factory=dict, init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        if self.in_rate == self.out_rate:
            self._design = None
            self._buf = np.zeros(0, np.float32)
            return
        self._design = d = _design(self.in_rate, self.out_rate)
        self._buf = np.zeros(d.K - 1 + max(1, self.in_rate // 50), np.float32)

    @property
    def identity(self) -> bool:
        return self.in_rate == self.out_rate

    @property
    def delay_s(self) -> float:
        """Group delay of the conversion in seconds (0 for the identity)."""
        return 0.0 if self._design is None else self._design.delay_s

    def process(self, pcm: bytes) -> bytes:
        """Resample one chunk (any whole number of samples) and return what is ready."""
        if len(pcm) & 1:
            raise ValueError(f"{len(pcm)} bytes is not a whole number of 16-bit samples")
        if self._design is None:
            return pcm
        n = len(pcm) >> 1
        fast = self._fast.get(n)
        if fast is not None and not self._t0:
            chunk, windows, block, head, tail = fast
            chunk[...] = np.frombuffer(pcm, _PCM16)
            out = windows.dot(block)
            head[...] = tail
        else:
            out = self._process_slow(pcm, n)
            if out is None:
                return b""
            if isinstance(out, bytes):
                return out
        _clip(out, _LO, _HI, out=out)
        return np.rint(out, out=out).astype(_PCM16).tobytes()  # type: ignore[no-any-return]

    def _process_slow(self, pcm: bytes, n: int) -> Any:
        """Any chunk: returns float32 output, None for no output, or bytes when split."""
        d = self._design
        assert d is not None
        if n > _PIECE_SAMPLES + d.M:
            piece = 2 * max(d.M, _PIECE_SAMPLES // d.M * d.M)
            return b"".join(self.process(pcm[i : i + piece]) for i in range(0, len(pcm), piece))
        if not n:
            return None
        hist = d.K - 1
        buf = self._buf
        if len(buf) < hist + n:
            buf = np.zeros(hist + n, np.float32)
            buf[:hist] = self._buf[:hist]
            self._buf = buf
            self._fast.clear()  # its views are of the old buffer
        buf[hist : hist + n] = np.frombuffer(pcm, _PCM16)
        plan = d.plan(n, self._t0)
        out = None
        if plan.block is not None:
            width = plan.block.shape[0]
            step = width - hist
            rows = n // step
            windows = as_strided(buf, (rows, width), (4 * step, 4), writeable=False)
            per_dot = max(1, _BLAS_MAX_MNK // plan.block.size)
            if rows > per_dot:  # a long chunk: a few products, each small enough for one thread
                parts = [windows[i : i + per_dot].dot(plan.block) for i in range(0, rows, per_dot)]
                out = np.concatenate(parts)
            else:
                out = windows.dot(plan.block)
                if len(self._fast) < 4:
                    chunk, head, tail = buf[hist : hist + n], buf[:hist], buf[n : n + hist]
                    self._fast[n] = (chunk, windows, plan.block, head, tail)
        elif plan.count:
            assert plan.coeffs is not None
            windows = as_strided(buf, (n, d.K), (4, 4), writeable=False)
            out = np.einsum("ij,ij->i", windows[plan.starts], plan.coeffs)
        self._t0 = plan.t0_next
        buf[:hist] = buf[n : n + hist]
        return out

    def reset(self) -> None:
        """Forget the input history, e.g. at a discontinuity in the input stream."""
        self._buf[:] = 0
        self._t0 = 0
