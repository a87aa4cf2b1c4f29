"""Logging: JSON lines for machines, a compact line format for people.

Everything bridge logs goes through stdlib ``logging`` under the ``bridge`` logger.
Stream-related lines carry ``stream_id`` (and whatever else the caller put in
``extra=``); both formats print every such extra field, so a line can always be
tied to its call::

    log = stream_logger(stream_id, call_id=call_id, route=route.name)
    log.info("app leg connected", extra={"attempt": 2})

or, without an adapter::

    logging.getLogger("bridge.streams").warning("bad frame", extra={"stream_id": sid})

The console format is a plain one-line formatter rather than ``rich.logging.RichHandler``:
under journald (the usual place we run) rich wraps long lines at 80 columns and emits
multi-line records, which breaks ``journalctl | grep stream_id=…``; the plain format
stays grep-able, deterministic and cheap.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import Counter, deque
from collections.abc import MutableMapping
from typing import IO, Any, Literal

import attrs
import msgspec
import trio

__all__ = [
    "BadPeerLog",
    "ConsoleFormatter",
    "JsonFormatter",
    "LogBudget",
    "StreamLogger",
    "configure_logging",
    "stream_logger",
]

LogFormat = Literal["json", "console"]

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_RESERVED = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
_CORE_KEYS = ("ts", "level", "logger", "msg", "exc", "stack")


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _RESERVED and not k.startswith("_")}


def _utc_timestamp(record: logging.LogRecord) -> str:
    """``2024-05-01T12:00:00.123Z``: UTC, millisecond precision, sortable."""
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{seconds}.{int(record.msecs):03d}Z"


def _fallback(obj: Any) -> Any:
    # An extra field we cannot encode natively (an enum, a Path, an exception, ...) is
    # logged as its str(); a log call must never raise because of what it logs.
    return str(obj)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, every extra field, exc."""

    def __init__(self) -> None:
        super().__init__()
        self._encoder = msgspec.json.Encoder(enc_hook=_fallback)

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": _utc_timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in _extras(record).items():
            # Extras never overwrite the core keys (they would corrupt the log schema).
            if key not in _CORE_KEYS:
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        try:
            return self._encoder.encode(out).decode("utf-8")
        except Exception:
            # e.g. a self-referencing extra (RecursionError): degrade to str() for the
            # extras. A log call must never raise because of what it logs.
            safe = {k: (v if k in _CORE_KEYS else str(v)) for k, v in out.items()}
            return self._encoder.encode(safe).decode("utf-8")


def _console_value(value: Any) -> str:
    text = str(value)
    if not text or any(c in text for c in ' "=\n\t'):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return text


class ConsoleFormatter(logging.Formatter):
    """``2024-05-01T12:00:00.123Z INFO    bridge.streams: msg stream_id=… route=…``."""

    def format(self, record: logging.LogRecord) -> str:
        line = (
            f"{_utc_timestamp(record)} {record.levelname:<7} {record.name}: {record.getMessage()}"
        )
        # stream_id first: it is the key people grep for.
        extras = _extras(record)
        if "stream_id" in extras:
            extras = {"stream_id": extras.pop("stream_id"), **extras}
        if extras:
            line += " " + " ".join(f"{k}={_console_value(v)}" for k, v in extras.items())
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        elif record.exc_text:
            line += "\n" + record.exc_text
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return line


class _BridgeHandler(logging.StreamHandler[IO[str]]):
    """Marks the handlers we install, so reconfiguring replaces only ours."""


def configure_logging(
    level: str = "info",
    fmt: LogFormat = "json",
    *,
    stream: IO[str] | None = None,
) -> None:
    """Route the ``bridge`` logger to ``stream`` (stderr) at ``level`` in ``fmt``.

    Idempotent (SIGHUP may call it again). ``bridge`` stops propagating, so a root
    handler installed by someone else does not print every line twice; the same
    handler is attached to the root logger at WARNING so that third-party warnings
    (httpx, websockets, trio) come out in the same format instead of raw stderr text.
    """
    try:
        numeric = _LEVELS[level.lower()]
    except KeyError:
        raise ValueError(f"unknown log level {level!r} (one of {', '.join(_LEVELS)})") from None
    if fmt == "json":
        formatter: logging.Formatter = JsonFormatter()
    elif fmt == "console":
        formatter = ConsoleFormatter()
    else:
        raise ValueError(f"unknown log format {fmt!r} (json or console)")

    handler = _BridgeHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(formatter)

    bridge = logging.getLogger("bridge")
    root = logging.getLogger()
    for target in (bridge, root):
        for old in [h for h in target.handlers if isinstance(h, _BridgeHandler)]:
            target.removeHandler(old)
    bridge.setLevel(numeric)
    bridge.propagate = False
    bridge.addHandler(handler)

    root_handler = _BridgeHandler(handler.stream)
    root_handler.setFormatter(formatter)
    root_handler.setLevel(logging.WARNING)
    root.addHandler(root_handler)


class StreamLogger(logging.LoggerAdapter[logging.Logger]):
    """A logger bound to one stream: every line carries ``stream_id`` and the bound fields.

    Fields given at the call site (``extra=``) are merged over the bound ones.
    """

    #: Distinct keys :meth:`log_once` remembers per stream; a hostile peer inventing a
    #: new message type per frame must not grow memory without bound.
    MAX_ONCE_KEYS = 256

    def __init__(self, logger: logging.Logger, stream_id: str, **fields: Any) -> None:
        super().__init__(logger, {"stream_id": stream_id, **fields})
        self._once: set[str] = set()

    @property
    def stream_id(self) -> str:
        return str(self.fields["stream_id"])

    @property
    def fields(self) -> dict[str, Any]:
        return dict(self.extra or {})

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        kwargs["extra"] = {**(self.extra or {}), **(kwargs.get("extra") or {})}
        return msg, kwargs

    def bind(self, **fields: Any) -> StreamLogger:
        """A new adapter with more fields (e.g. ``call_id`` once the start message came)."""
        merged = {**self.fields, **fields}
        stream_id = merged.pop("stream_id")
        return StreamLogger(self.logger, stream_id, **merged)

    def log_once(self, key: str, level: int, msg: str, *args: Any, **kwargs: Any) -> bool:
        """Log ``msg`` only the first time ``key`` is seen on this stream; True if logged.

        For "unknown event type X" and similar per-frame conditions: one line per
        (stream, key), the rest goes to the metrics counters.
        """
        if key in self._once or len(self._once) >= self.MAX_ONCE_KEYS:
            return False
        self._once.add(key)
        self.log(level, msg, *args, **kwargs)
        return True


def stream_logger(
    stream_id: str, /, *, logger: logging.Logger | None = None, **fields: Any
) -> StreamLogger:
    """A :class:`StreamLogger` on ``bridge.streams`` (or ``logger``) for ``stream_id``."""
    return StreamLogger(
        logger if logger is not None else logging.getLogger("bridge.streams"), stream_id, **fields
    )


# ------------------------------------------------------------------ bad peers, rate limited


@attrs.define(slots=True, eq=False)
class LogBudget:
    """At most ``max_lines`` lines in any ``interval_s`` (a sliding window), and a count,
    by key, of the lines it held back. Pure: the caller passes the time.

    The window slides: with the last ``max_lines`` allowed times remembered, a line is
    allowed when the oldest of them is at least ``interval_s`` old. So no interval of that
    length, wherever it starts, ever holds more than ``max_lines`` lines -- a fixed window
    would let twice as many through across its boundary.

    Held-back lines are summarised at most once per interval: :meth:`summary` returns
    the counts once ``interval_s`` has passed since the first line it held back.
    """

    max_lines: int
    interval_s: float
    _allowed: deque[float] = attrs.field(init=False)
    _held: Counter[str] = attrs.field(init=False, factory=Counter)
    #: When the pending summary is due (None: nothing held back).
    summary_due: float | None = attrs.field(init=False, default=None)
    #: Lines allowed and held back since creation.
    allowed_total: int = attrs.field(init=False, default=0)
    held_total: int = attrs.field(init=False, default=0)

    def __attrs_post_init__(self) -> None:
        if self.max_lines < 0 or not self.interval_s > 0:
            raise ValueError("max_lines must be >= 0 and interval_s > 0")
        self._allowed = deque(maxlen=self.max_lines or None)

    def allow(self, key: str, now: float) -> bool:
        """True if a line about ``key`` may be written at ``now``; else it is counted."""
        allowed = self._allowed
        if self.max_lines and (
            len(allowed) < self.max_lines or now - allowed[0] >= self.interval_s
        ):
            allowed.append(now)  # maxlen drops the oldest
            self.allowed_total += 1
            return True
        self._held[key] += 1
        self.held_total += 1
        if self.summary_due is None:
            self.summary_due = now + self.interval_s
        return False

    def summary(self, now: float, *, force: bool = False) -> dict[str, int] | None:
        """The held-back counts by key, once due (or ``force``: at shutdown), then reset;
        None when nothing is due."""
        due = self.summary_due
        if due is None or (now < due and not force):
            return None
        held = dict(self._held.most_common())
        self._held.clear()
        self.summary_due = None
        return held


@attrs.define(slots=True, eq=False)
class BadPeerLog:
    """The one gate of every bad-peer WARNING line (bad input, failed auth, admission
    refusals, handshakes from nowhere): a :class:`LogBudget` of lines per interval, and
    one summary line per interval when it held lines back::

        suppressed 1520 bad-input lines in the last 10s: by kind bad_handshake=1400 ...

    Counting is the caller's business (metrics count every event; this only decides
    which ones also get a line). Call :meth:`warning` from Trio code; run :meth:`serve`
    in the daemon's nursery so the summary comes out even when the flood stops.
    """

    logger: logging.Logger
    budget: LogBudget
    _wake: trio.Event = attrs.field(init=False, factory=trio.Event)

    @classmethod
    def create(cls, logger: logging.Logger, per_interval: int, interval_s: float) -> BadPeerLog:
        return cls(logger, LogBudget(per_interval, interval_s))

    def configure(self, per_interval: int, interval_s: float) -> None:
        """New limits (SIGHUP): what is held back so far is summarised first."""
        budget = self.budget
        if (budget.max_lines, budget.interval_s) != (per_interval, interval_s):
            self._emit_summary(trio.current_time(), force=True)
            self.budget = LogBudget(per_interval, interval_s)

    def warning(self, kind: str, msg: str, *args: object, extra: dict[str, Any]) -> bool:
        """Log ``msg`` at WARNING if the budget allows; True if it was written."""
        now = trio.current_time()
        self._emit_summary(now)
        if self.budget.allow(kind, now):
            self.logger.warning(msg, *args, extra=extra)
            return True
        self._wake.set()
        return False

    def _emit_summary(self, now: float, *, force: bool = False) -> None:
        held = self.budget.summary(now, force=force)
        if not held:
            return
        total = sum(held.values())
        interval = self.budget.interval_s
        self.logger.warning(
            "suppressed %d bad-input lines in the last %gs: by kind %s",
            total,
            interval,
            " ".join(f"{k}={n}" for k, n in held.items()),
            extra={"suppressed": total, "by_kind": held, "interval_s": interval},
        )

    async def serve(self) -> None:
        """Write each summary when it falls due; the last one when cancelled."""
        try:
            while True:
                await self._wake.wait()
                self._wake = trio.Event()
                due = self.budget.summary_due
                if due is not None:
                    await trio.sleep_until(due)
                    self._emit_summary(trio.current_time())
        finally:
            self._emit_summary(trio.current_time(), force=True)
