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
from collections.abc import MutableMapping
from typing import IO, Any, Literal

import msgspec

__all__ = [
    "ConsoleFormatter",
    "JsonFormatter",
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
