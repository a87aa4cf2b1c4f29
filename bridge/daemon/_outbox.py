"""The durable event outbox, status-callback delivery and stream records.

``open_event_store(path, registry=...)`` opens one SQLite file and runs, in a nursery it
owns::

    event store
    ├── writer      batches emitted events, records and delivery results into one
    │               transaction; an event is committed before its delivery starts
    ├── dispatcher  releases streams whose retry backoff has elapsed, and probes
    ├── workers     POST one event at a time (as many as ``concurrency``)
    └── pruner      deletes records and finished events older than the retention

**The media path never waits on it.** ``emit()`` and ``record_stream()`` are synchronous
and O(1): they append to an in-memory list and set a ``trio.Event``. Encoding, SQLite and
HTTP all happen in the store's own tasks; SQLite runs in a worker thread.

**Threading model for SQLite.** One ``sqlite3.Connection`` (``check_same_thread=False``)
and one ``trio.CapacityLimiter(1)``: every statement runs via ``trio.to_thread.run_sync``
under that limiter, so exactly one thread uses the connection at a time and statements
from the writer, the workers, the pruner and the API never interleave. Thread hops are
not cancellable once started (``abandon_on_cancel=False``), so a transaction is never
left half-done by a Trio cancellation. WAL + ``synchronous=NORMAL``: a commit does not
fsync (the WAL is synced at checkpoints), which survives a process crash; after a power
loss the last few commits may be lost.

**Ordering model.** Every event gets a monotonic ``seq`` (``AUTOINCREMENT``, never
reused). Each stream with undelivered events has an in-memory FIFO of seqs; a stream is
owned by at most one worker at a time and its head event must be delivered or marked
failed before the next one is sent. Fresh events keep their encoded row in memory (up
to 10,000 undelivered), so the common case never reads back from the file. Streams take turns on a shared ready queue (one
event per turn, round robin), so one busy stream cannot starve the others. A stream in
retry backoff sits in the dispatcher's timer heap and holds no worker.

**Delivery.** At least once: a POST that was cut off (timeout, crash, close) is sent
again, with the same ``event_id``. Retried with exponential backoff and full jitter on
connect errors, timeouts, 5xx, 429 and 408 (``Retry-After`` honoured, capped at
``max_backoff_s``); any other status is a permanent failure. An event still failing
``give_up_after_s`` after its timestamp is marked failed (``expired``). Failed events stay
in the database. One attempt (the signed request, its time and size bounds, how the
answer is read) and the backoff are ``bridge/_callbackpost.py``, shared with cluster mode.

**Origins.** Connect errors, timeouts, 429 and 502-504 mark the receiver's origin
(scheme, host, port) down: its streams park in a line and one probe at a time, on the
backoff schedule, tests it; the first answer releases them all. An outage then costs one
request per backoff period instead of one per waiting stream, a hanging receiver holds
one worker (after its first timeouts) instead of all of them, and recovery does not wait for each stream's own
backoff to run out.

**Write failures: nothing is lost quietly.** A failed transaction (disk full, I/O error,
a damaged page) keeps its batch in memory, in order, and is tried again every second;
events and records emitted meanwhile are held too, up to ``max_held`` (10,000) items.
While writes fail, or while one write has run for more than 5 s, ``healthy`` is False
(``bridge_outbox_healthy`` 0, and the daemon's ``/readyz`` answers 503): the first
failure logs one ERROR line, then a summary once a minute, and the first success one
WARNING line; the store recovers by itself. Past ``max_held``, a new event or record is
lost: counted in ``bridge_events_lost_total`` / ``bridge_stream_records_lost_total``
and logged on an ERROR line with its ``event_id`` (or ``stream_id``). Whatever is still
unwritten at close is lost the same way (cause ``shutdown``), one line per item, then a
line with the totals (``events_lost``, ``records_lost``: the daemon exits non-zero).
Events are not delivered before they are written, so held ones wait for the disk.

**Close.** Stop accepting; give POSTs already in flight up to one second to finish and
cancel the rest (they stay ``pending`` and go out on the next open); commit everything
still queued (a failing writer gets three more tries, half a second apart); close the
database. The whole close is bounded by ``close_timeout_s`` and runs shielded, so a
cancelled daemon still commits its final ``StopStream`` events.

**A corrupt file** (SQLite reports "file is not a database" or "database disk image is
malformed" while opening it) is moved aside to ``<path>.corrupt-<UTC timestamp>`` (with
its ``-wal``/``-shm``) and a fresh database is started, with one ERROR line that says
where it went and how many undelivered events and records it held (when that could be
read): a bad file must not keep the service in a restart loop. Corruption found later,
by a write, is a write failure like any other (above); the next start moves the file.

One file per process: the store takes an exclusive ``flock`` on ``<path>.lock`` so two
processes can never deliver the same outbox twice.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import heapq
import itertools
import logging
import math
import os
import sqlite3
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import IO, Any, Literal, TypeVar
from urllib.parse import quote, urlsplit

import attrs
import httpx
import msgspec
import trio
from prometheus_client import CollectorRegistry, Counter, Gauge

from .._callbackpost import CallbackOutcome, post_callback, retry_delay_s
from .._callbackpost import describe_error as _describe
from .._errors import OutboxError
from .._version import __version__
from ._events import EVENT_NAMES, StreamEvent, StreamRecord, iso_utc, sign

__all__ = ["EventStatus", "EventStore", "open_event_store"]

logger = logging.getLogger("bridge.events")

T = TypeVar("T")
EventStatus = Literal["pending", "delivered", "failed", "skipped"]
_LostCause = Literal["held_full", "shutdown"]
_LOST_CAUSES: tuple[_LostCause, ...] = ("held_full", "shutdown")

SCHEMA_VERSION = 1
USER_AGENT = f"bridge/{__version__}"

# In-flight POSTs get this long to finish when the store closes; then they are
# cancelled and stay pending for the next start.
_INFLIGHT_GRACE_S = 1.0
# Pruning deletes in chunks so one large delete never holds the connection (and with it
# the writer) for long.
_PRUNE_CHUNK = 5000
# Most rows one list call returns.
_MAX_LIST = 10_000
# Undelivered events whose row (with its body) stays in memory; beyond this backlog new
# rows are read back from the file when their turn comes (~1 KB each otherwise).
_MAX_ROWS_IN_MEMORY = 10_000
# After a failed write (disk full, I/O error) the writer waits this long and tries again
# with the same batch.
_WRITE_RETRY_S = 1.0
# Events and records waiting in memory for their write (normally a few, for one
# transaction; thousands only while writes fail). Past this, new ones are lost: counted,
# and logged with their ids. ~1-5 KB each, so the worst case is tens of MB.
_MAX_HELD = 10_000
# While writes keep failing: one ERROR line at the transition, then a summary this often.
_SUMMARY_INTERVAL_S = 60.0
# A single write still running after this long (a hung disk, an NFS stall) also makes
# the store unhealthy: nothing is being persisted.
_WRITE_STALL_S = 5.0
# At close, a failing writer tries this many more times, this far apart, before it
# gives up on what it holds (the close itself is bounded by close_timeout_s).
_FINAL_WRITE_ATTEMPTS = 3
_FINAL_WRITE_RETRY_S = 0.5
# SQLite's primary result codes for a damaged file (sqlite3.h: SQLITE_CORRUPT,
# SQLITE_NOTADB). Any other error (full, read-only, locked, cannot open) is not
# corruption and is never a reason to move a file aside.
_SQLITE_CORRUPT = 11
_SQLITE_NOTADB = 26

_SCHEMA = """
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,  -- delivery order; never reused
    event_id        TEXT NOT NULL UNIQUE,
    stream_id       TEXT NOT NULL,
    event           TEXT NOT NULL,
    created_at      REAL NOT NULL,                      -- the event's timestamp, unix s
    callback_url    TEXT NOT NULL,
    callback_secret TEXT NOT NULL,                      -- needed to re-sign after a restart
    body            BLOB NOT NULL,
    status          TEXT NOT NULL
                    CHECK (status IN ('pending', 'delivered', 'failed', 'skipped')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT,
    failed_cause    TEXT,                               -- permanent | expired
    delivered_at    REAL,
    updated_at      REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_stream ON events (stream_id, seq);
CREATE INDEX IF NOT EXISTS events_by_status ON events (status, seq);
CREATE INDEX IF NOT EXISTS events_by_created ON events (created_at);
CREATE TABLE IF NOT EXISTS streams (
    stream_id  TEXT PRIMARY KEY,
    ended_at   REAL NOT NULL,
    record     BLOB NOT NULL                            -- StreamRecord.to_dict() as JSON
);
CREATE INDEX IF NOT EXISTS streams_by_ended ON streams (ended_at);
"""

_EVENT_COLUMNS = (
    "seq, event_id, stream_id, event, created_at, callback_url, body, status, attempts,"
    " last_error, failed_cause, delivered_at, updated_at"
)

_json_encode = msgspec.json.Encoder().encode
_json_decode = msgspec.json.Decoder().decode


# --------------------------------------------------------------------------- data


@attrs.frozen(slots=True)
class _Result:
    """A delivery outcome for the writer to persist. ``final`` moves the row out of pending."""

    seq: int
    final: bool
    status: EventStatus
    attempts: int
    last_error: str | None
    failed_cause: str | None = None
    delivered_at: float | None = None


_Item = StreamEvent | StreamRecord | _Result


@attrs.frozen(slots=True)
class _Row:
    """What a worker needs to send one event (loaded from the database)."""

    seq: int
    event_id: str
    stream_id: str
    event: str
    created_at: float
    callback_url: str
    callback_secret: str
    body: bytes
    status: str
    attempts: int


@attrs.define(slots=True)
class _Pending:
    """One undelivered event in a stream's in-memory FIFO. Past the in-memory cap the
    row is read back when it reaches the head, so a long backlog costs ~100 bytes per
    event rather than ~1 KB."""

    seq: int
    created_at: float
    row: _Row | None = None
    attempts: int = 0
    last_error: str | None = None
    not_before: float = -math.inf  # trio clock: a Retry-After still to be honoured


@attrs.define(slots=True)
class _Origin:
    """Delivery state of one receiver (scheme, host, port) while it is failing.

    Without it, every stream with a backlog would back off and retry on its own: during
    an outage N streams make N connection attempts per backoff period, and after it each
    stream waits out its own (up to ``max_backoff``) delay. With it, one probe at a time
    tests the receiver and its success releases every waiting stream at once.
    """

    failures: int = 0
    down_until: float = -math.inf  # trio clock
    probe: str | None = None  # the stream currently allowed to test the origin
    parked: deque[str] = attrs.field(factory=deque)  # streams waiting for it, in order

    def blocks(self, stream_id: str, now: float) -> bool:
        if self.probe is not None:
            return self.probe != stream_id
        return now < self.down_until


# --------------------------------------------------------------------------- sqlite (runs in a thread)


def _create_private(path: str) -> None:
    # The file holds callback secrets: create it private before SQLite does (SQLite
    # gives the -wal/-shm files the same mode).
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))


def _is_corrupt(exc: BaseException) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(exc, sqlite3.DatabaseError) and code is not None and (
        code & 0xFF in (_SQLITE_CORRUPT, _SQLITE_NOTADB)
    )


def _connect(path: str) -> tuple[sqlite3.Connection, list[tuple[int, str, float]]]:
    """Open ``path``, bring its schema up and read its undelivered events."""
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    try:
        conn.execute("PRAGMA busy_timeout = 5000")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        row = conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
        ).fetchone()
        if row is not None:
            found = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0]
            if found is not None and found > SCHEMA_VERSION:
                raise OutboxError(
                    f"{path}: schema version {found} is newer than this bridge ({SCHEMA_VERSION})"
                )
        conn.executescript(_SCHEMA)
        if conn.execute("SELECT COUNT(*) FROM schema_version").fetchone()[0] == 0:
            conn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
        pending = _load_pending(conn)
    except BaseException:
        conn.close()
        raise
    return conn, pending


@attrs.frozen(slots=True)
class _MovedAside:
    """A corrupt database that was renamed so the store could start on a fresh one."""

    path: str
    error: str
    pending: int | None  # undelivered events it held, when that could still be read
    records: int | None


def _count_readable(path: str) -> tuple[int | None, int | None]:
    """Best effort: how many pending events and stream records a damaged file holds."""
    pending = records = None
    uri = "file:" + quote(os.path.abspath(path)) + "?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True)
    except sqlite3.Error:
        return None, None
    try:
        with contextlib.suppress(sqlite3.Error):
            pending = conn.execute(
                "SELECT COUNT(*) FROM events WHERE status = 'pending'"
            ).fetchone()[0]
        with contextlib.suppress(sqlite3.Error):
            records = conn.execute("SELECT COUNT(*) FROM streams").fetchone()[0]
    finally:
        conn.close()
    return pending, records


def _move_aside(path: str, exc: BaseException) -> _MovedAside:
    pending, records = _count_readable(path)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    dest = f"{path}.corrupt-{stamp}"
    n = 1
    while os.path.exists(dest):
        n += 1
        dest = f"{path}.corrupt-{stamp}-{n}"
    os.rename(path, dest)
    # Its WAL and shared-memory files go with it under the names SQLite expects, so the
    # moved file opens with every commit it had.
    for suffix in ("-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.rename(path + suffix, dest + suffix)
    return _MovedAside(dest, _describe(exc), pending, records)


def _open_db(
    path: str,
) -> tuple[sqlite3.Connection, IO[bytes] | None, list[tuple[int, str, float]], _MovedAside | None]:
    """Lock and open ``path``. A file SQLite reports as damaged (not a database, or a
    malformed image) is moved aside and a fresh one started: a corrupt file must not
    keep the service from starting (systemd would restart it in a loop)."""
    lock: IO[bytes] | None = None
    if path != ":memory:":
        _create_private(path)
        lock = open(path + ".lock", "ab")  # noqa: SIM115 - held for the store's lifetime
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise OutboxError(f"{path}: in use by another bridge process") from None
    moved: _MovedAside | None = None
    try:
        try:
            conn, pending = _connect(path)
        except sqlite3.DatabaseError as exc:
            if path == ":memory:" or not _is_corrupt(exc):
                raise
            moved = _move_aside(path, exc)
            _create_private(path)
            conn, pending = _connect(path)
    except BaseException:
        if lock is not None:
            lock.close()
        raise
    return conn, lock, pending, moved


def _close_db(conn: sqlite3.Connection, lock: IO[bytes] | None) -> None:
    try:
        conn.close()
    finally:
        if lock is not None:
            lock.close()  # releases the flock


def _load_pending(conn: sqlite3.Connection) -> list[tuple[int, str, float]]:
    return conn.execute(
        "SELECT seq, stream_id, created_at FROM events WHERE status = 'pending' ORDER BY seq"
    ).fetchall()


_WriteResult = tuple[int, bytes] | str | None


def _write_batch(conn: sqlite3.Connection, items: list[_Item], now: float) -> list[_WriteResult]:
    """Write ``items`` in one transaction. Per item: ``(seq, body)`` for a stored event,
    None for other items, or an error string (the item was unusable and skipped; the
    rest still commits)."""
    out: list[_WriteResult] = []
    conn.execute("BEGIN IMMEDIATE")
    try:
        for item in items:
            if isinstance(item, StreamEvent):
                try:
                    body = item.body()
                except (msgspec.EncodeError, TypeError, ValueError) as exc:
                    out.append(f"cannot encode event: {exc}")
                    continue
                cur = conn.execute(
                    "INSERT OR IGNORE INTO events (event_id, stream_id, event, created_at,"
                    " callback_url, callback_secret, body, status, updated_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        item.event_id,
                        item.stream_id,
                        item.event,
                        item.timestamp.timestamp(),
                        item.callback_url,
                        item.callback_secret,
                        body,
                        "pending" if item.callback_url else "skipped",
                        now,
                    ),
                )
                if cur.rowcount == 1 and cur.lastrowid is not None:
                    out.append((cur.lastrowid, body))
                else:
                    out.append("duplicate event_id: already stored, ignored")
            elif isinstance(item, StreamRecord):
                try:
                    record = _json_encode(item.to_dict())
                except (msgspec.EncodeError, TypeError, ValueError) as exc:
                    out.append(f"cannot encode record: {exc}")
                    continue
                conn.execute(
                    "INSERT OR REPLACE INTO streams (stream_id, ended_at, record) VALUES (?, ?, ?)",
                    (item.stream_id, item.ended_at.timestamp(), record),
                )
                out.append(None)
            elif item.final:
                conn.execute(
                    "UPDATE events SET status = ?, attempts = ?, last_error = ?, failed_cause = ?,"
                    " delivered_at = ?, updated_at = ? WHERE seq = ? AND status = 'pending'",
                    (
                        item.status,
                        item.attempts,
                        item.last_error,
                        item.failed_cause,
                        item.delivered_at,
                        now,
                        item.seq,
                    ),
                )
                out.append(None)
            else:
                conn.execute(
                    "UPDATE events SET attempts = ?, last_error = ?, updated_at = ? WHERE seq = ?",
                    (item.attempts, item.last_error, now, item.seq),
                )
                out.append(None)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return out


def _fetch_row(conn: sqlite3.Connection, seq: int) -> _Row | None:
    row = conn.execute(
        "SELECT seq, event_id, stream_id, event, created_at, callback_url, callback_secret,"
        " body, status, attempts FROM events WHERE seq = ?",
        (seq,),
    ).fetchone()
    return None if row is None else _Row(*row)


def _ts(value: float | None) -> str | None:
    return None if value is None else iso_utc(datetime.fromtimestamp(value, UTC))


def _event_dict(row: tuple[Any, ...]) -> dict[str, Any]:
    (seq, event_id, stream_id, event, created_at, url, body, status, attempts, last_error,
     failed_cause, delivered_at, updated_at) = row  # fmt: skip
    return {
        "seq": seq,
        "event_id": event_id,
        "stream_id": stream_id,
        "event": event,
        "status": status,
        "attempts": attempts,
        "last_error": last_error,
        "failed_cause": failed_cause,
        "created_at": _ts(created_at),
        "delivered_at": _ts(delivered_at),
        "updated_at": _ts(updated_at),
        "callback_url": url,
        "body": _json_decode(body),
    }


def _get_stream(conn: sqlite3.Connection, stream_id: str) -> dict[str, Any] | None:
    rec = conn.execute("SELECT record FROM streams WHERE stream_id = ?", (stream_id,)).fetchone()
    events = conn.execute(
        f"SELECT {_EVENT_COLUMNS} FROM events WHERE stream_id = ? ORDER BY seq", (stream_id,)
    ).fetchall()
    if rec is None and not events:
        return None
    callbacks = [_event_dict(r) for r in events]
    if rec is not None:
        out: dict[str, Any] = _json_decode(rec[0])
        out["state"] = "ended"
    else:
        # Events but no record yet: the stream is still running, or the process that
        # ran it died before it ended.
        first = callbacks[0]["body"]
        out = {
            "stream_id": stream_id,
            "call_id": first.get("call_id", ""),
            "route": first.get("route", ""),
            "app_url": first.get("app_url", ""),
            "state": "unrecorded",
        }
    out["callbacks"] = callbacks
    return out


def _list_streams(
    conn: sqlite3.Connection, since: float | None, limit: int
) -> list[dict[str, Any]]:
    rows = conn.execute(
        "SELECT record FROM streams WHERE ended_at >= ? ORDER BY ended_at DESC, stream_id LIMIT ?",
        (-math.inf if since is None else since, limit),
    ).fetchall()
    out = []
    for (record,) in rows:
        item: dict[str, Any] = _json_decode(record)
        item["state"] = "ended"
        out.append(item)
    return out


def _list_events(
    conn: sqlite3.Connection, status: str | None, stream_id: str | None, limit: int
) -> list[dict[str, Any]]:
    where, args = [], []
    if status is not None:
        where.append("status = ?")
        args.append(status)
    if stream_id is not None:
        where.append("stream_id = ?")
        args.append(stream_id)
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    rows = conn.execute(
        f"SELECT {_EVENT_COLUMNS} FROM events {clause} ORDER BY seq DESC LIMIT ?",
        (*args, limit),
    ).fetchall()
    return [_event_dict(r) for r in rows]


def _prune_chunk(conn: sqlite3.Connection, cutoff: float) -> tuple[int, int]:
    with conn:  # one short transaction per chunk
        records = conn.execute(
            "DELETE FROM streams WHERE stream_id IN"
            " (SELECT stream_id FROM streams WHERE ended_at < ? LIMIT ?)",
            (cutoff, _PRUNE_CHUNK),
        ).rowcount
        # Pending events are never pruned: they are the outbox, not history.
        events = conn.execute(
            "DELETE FROM events WHERE seq IN (SELECT seq FROM events"
            " WHERE created_at < ? AND status != 'pending' LIMIT ?)",
            (cutoff, _PRUNE_CHUNK),
        ).rowcount
    return records, events


# --------------------------------------------------------------------------- helpers


@functools.lru_cache(maxsize=1024)
def _origin_key(url: str) -> str:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return url  # malformed: its own origin (the POST will fail permanently anyway)
    host = (parts.hostname or "").lower()
    default = 443 if parts.scheme == "https" else 80
    return f"{parts.scheme}://{host}:{port or default}"


def _clamp_limit(limit: int) -> int:
    # SQLite reads a negative LIMIT as "no limit"; the admin API passes user input here.
    return max(0, min(int(limit), _MAX_LIST))


# --------------------------------------------------------------------------- the store


class EventStore:
    """The outbox and record store. Get one from :func:`open_event_store`.

    ``emit`` and ``record_stream`` must be called from the Trio thread that runs the store.
    """

    def __init__(
        self,
        path: str,
        *,
        registry: CollectorRegistry,
        client: httpx.AsyncClient,
        callback_timeout_s: float,
        backoff_s: float,
        max_backoff_s: float,
        give_up_after_s: float,
        concurrency: int,
        retention_s: float,
        prune_interval_s: float,
        max_held: int = _MAX_HELD,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if max_held < 1:
            raise ValueError("max_held must be at least 1")
        self.path = path
        self._client = client
        self._timeout = callback_timeout_s
        self._backoff = backoff_s
        self._max_backoff = max_backoff_s
        self._give_up_after = give_up_after_s
        self._concurrency = concurrency
        self._retention = retention_s
        self._prune_interval = prune_interval_s

        self._conn: sqlite3.Connection | None = None
        self._lock_file: IO[bytes] | None = None
        self._db_limiter = trio.CapacityLimiter(1)

        # Writer side: what emit()/record_stream()/workers queued and is not committed yet.
        self._queue: list[_Item] = []
        self._writer_wake = trio.Event()
        self._writer_stop = False
        self._writer_done = trio.Event()
        self._enqueued_total = 0
        self._committed_total = 0
        self._committed = trio.Event()  # replaced after every commit
        self._queued_pending = 0  # events with a callback URL, queued, not committed
        self._max_held = max_held
        self._held = 0  # events and records queued, not committed
        self._writer_stopping = trio.Event()

        # Write health (see ``healthy``). Monotonic times: read from the admin server too.
        self._write_error: str | None = None
        self._write_started: float | None = None
        self._unhealthy_since = 0.0
        self._failed_writes = 0
        self._next_summary = 0.0
        self._final_failures = 0
        #: What could not be kept: counted, each logged with its id (the daemon's exit
        #: status says so too).
        self.events_lost = 0
        self.records_lost = 0
        #: Where a corrupt database found at open was moved (None if it was not).
        self.moved_aside: str | None = None

        # Delivery side.
        self._streams: dict[str, deque[_Pending]] = {}  # keys == streams scheduled somewhere
        self._ready_send, self._ready_recv = trio.open_memory_channel[str](math.inf)
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._origins: dict[str, _Origin] = {}  # only origins that are failing
        self._probing: dict[str, str] = {}  # stream id -> origin key it is probing
        self._tiebreak = itertools.count()
        self._timer_wake = trio.Event()
        self._outstanding = 0  # committed pending events not yet delivered/failed
        self._depth = 0  # rows with status 'pending' in the database
        self._oldest_created: float | None = None
        self._next_refresh = -math.inf
        self._inflight = 0
        self._draining = False
        self._idle = trio.Event()
        self._delivery_scope = trio.CancelScope()
        self._delivery_done = trio.Event()
        self._progress = trio.Event()  # replaced whenever pending_count may have dropped

        self._accepting = False

        self._registry = registry
        self._collectors: list[Any] = []
        try:
            self._register_metrics()
        except BaseException:
            self._unregister()  # e.g. a name already taken: leave the registry as it was
            raise

    # -- metrics -------------------------------------------------------------------

    def _register_metrics(self) -> None:
        emitted = self._counter("bridge_events_emitted_total", "Events emitted", ["event"])
        delivered = self._counter(
            "bridge_events_delivered_total", "Events delivered (2xx)", ["event"]
        )
        # Label children resolved once: emit() is on the media path and labels() is not free.
        self._m_emitted: dict[str, Counter] = {n: emitted.labels(event=n) for n in EVENT_NAMES}
        self._m_delivered_family = delivered
        self._m_delivered: dict[str, Counter] = {n: delivered.labels(event=n) for n in EVENT_NAMES}
        self._m_retried = self._counter(
            "bridge_events_retried_total", "Callback attempts that failed and were retried"
        )
        failed = self._counter("bridge_events_failed_total", "Events marked failed", ["cause"])
        self._m_failed = {c: failed.labels(cause=c) for c in ("permanent", "expired")}
        self._m_records = self._counter("bridge_stream_records_total", "Stream records stored")
        self._m_write_errors = self._counter(
            "bridge_outbox_write_errors_total",
            "Failed outbox transactions (disk full, I/O error); what they held is kept in"
            " memory and written again",
        )
        lost_events = self._counter(
            "bridge_events_lost_total",
            "Events that could not be persisted and were discarded (each logged with its"
            " event_id): held_full = the in-memory hold was full, shutdown = still unwritten"
            " when the process stopped",
            ["cause"],
        )
        lost_records = self._counter(
            "bridge_stream_records_lost_total",
            "Stream records that could not be persisted and were discarded (each logged"
            " with its stream_id)",
            ["cause"],
        )
        self._m_lost_events = {c: lost_events.labels(cause=c) for c in _LOST_CAUSES}
        self._m_lost_records = {c: lost_records.labels(cause=c) for c in _LOST_CAUSES}
        self._gauge(
            "bridge_outbox_healthy",
            "1 while outbox writes succeed; 0 while they fail or one hangs (readyz is 503)",
            lambda: 1.0 if self.healthy else 0.0,
        )
        self._gauge(
            "bridge_outbox_held_items",
            "Events and stream records waiting in memory for their write",
            lambda: self._held,
        )
        self._gauge(
            "bridge_events_pending",
            "Events emitted and not yet delivered or failed",
            lambda: self.pending_count,
        )
        self._gauge(
            "bridge_outbox_depth",
            "Rows with status pending in the outbox",
            lambda: self._depth,
        )
        self._gauge(
            "bridge_outbox_oldest_pending_age_seconds",
            "Age of the oldest undelivered event (0 when none)",
            self._oldest_age,
        )

    def _counter(self, name: str, doc: str, labels: list[str] | None = None) -> Counter:
        c = Counter(name, doc, labels or [], registry=self._registry)
        self._collectors.append(c)
        return c

    def _gauge(self, name: str, doc: str, fn: Callable[[], float]) -> None:
        g = Gauge(name, doc, registry=self._registry)
        g.set_function(fn)
        self._collectors.append(g)

    def _unregister(self) -> None:
        for c in self._collectors:
            with contextlib.suppress(KeyError):
                self._registry.unregister(c)
        self._collectors.clear()

    def _delivered_counter(self, event: str) -> Counter:
        # Rows written by another bridge version may carry an event name this one lacks.
        child = self._m_delivered.get(event)
        if child is None:
            child = self._m_delivered[event] = self._m_delivered_family.labels(event=event)
        return child

    def _oldest_age(self) -> float:
        # Read at scrape time (maybe from another thread): only a float is read here; the
        # dispatcher refreshes it at least once a second.
        oldest = self._oldest_created
        return 0.0 if oldest is None else max(0.0, time.time() - oldest)

    def _refresh_oldest(self) -> None:
        self._oldest_created = min((q[0].created_at for q in self._streams.values()), default=None)

    # -- public, synchronous (media path) ------------------------------------------------

    @property
    def healthy(self) -> bool:
        """False while outbox writes fail, or while one has run for more than 5 s: what
        is emitted then is held in memory (up to ``max_held`` items), not persisted."""
        return self.problem is None

    @property
    def problem(self) -> str | None:
        """Why the store is not healthy (None when it is)."""
        if self._write_error is not None:
            return self._write_error
        started = self._write_started
        if started is not None:
            running = time.monotonic() - started
            if running > _WRITE_STALL_S:
                return f"a write has been running for {running:.0f}s"
        return None

    @property
    def held_count(self) -> int:
        """Events and records emitted and not yet written."""
        return self._held

    @property
    def pending_count(self) -> int:
        """Events emitted (or loaded at open) that are neither delivered nor failed yet."""
        return self._queued_pending + self._outstanding

    def emit(self, event: StreamEvent) -> None:
        """Queue ``event`` for the outbox. Never blocks, never awaits: O(1).

        Raises :class:`OutboxError` once the store is closing.
        """
        if not self._accepting:
            raise OutboxError("event store is closed")
        self._m_emitted[event.event].inc()
        if self._held >= self._max_held:
            self._lose(event, "held_full")
            return
        self._held += 1
        self._queue.append(event)
        self._enqueued_total += 1
        if event.callback_url:
            self._queued_pending += 1
        self._writer_wake.set()

    def record_stream(self, record: StreamRecord) -> None:
        """Queue an ended stream's record. Never blocks, never awaits: O(1)."""
        if not self._accepting:
            raise OutboxError("event store is closed")
        if self._held >= self._max_held:
            self._lose(record, "held_full")
            return
        self._held += 1
        self._queue.append(record)
        self._enqueued_total += 1
        self._writer_wake.set()

    def _lose(self, item: StreamEvent | StreamRecord, cause: _LostCause) -> None:
        if cause == "held_full":
            why = f"the outbox cannot write and already holds {self._max_held} items in memory"
        else:
            why = "not written to the outbox before the process stopped"
        if isinstance(item, StreamEvent):
            self.events_lost += 1
            self._m_lost_events[cause].inc()
            logger.error(
                "event lost: %s",
                why,
                extra={
                    "event_id": item.event_id,
                    "stream_id": item.stream_id,
                    "event": item.event,
                    "cause": cause,
                },
            )
        else:
            self.records_lost += 1
            self._m_lost_records[cause].inc()
            logger.error(
                "stream record lost: %s", why, extra={"stream_id": item.stream_id, "cause": cause}
            )

    # -- public, async (API and tests) -------------------------------------------------

    async def flush(self) -> None:
        """Wait until everything queued so far is committed."""
        target = self._enqueued_total
        while self._committed_total < target:
            if self._writer_done.is_set():
                raise OutboxError(
                    f"event store closed with {target - self._committed_total} items uncommitted"
                )
            await self._committed.wait()

    async def wait_delivered(self) -> None:
        """Wait until nothing is pending and every outcome is committed (tests, benches).

        No timeout parameter, Trio style: wrap it in ``trio.fail_after``.
        """
        while self.pending_count:
            await self._progress.wait()
        await self.flush()

    async def get_stream(self, stream_id: str) -> dict[str, Any] | None:
        """The stream's record (``state: "ended"``) and its callbacks with their delivery
        status; ``state: "unrecorded"`` with just the callbacks when there is no record
        (the stream is still live, or its process died before it ended); None when the
        store knows nothing of it."""
        return await self._db(lambda c: _get_stream(c, stream_id))

    async def list_streams(
        self, *, since: datetime | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        """Ended streams, newest first, ``ended_at >= since``."""
        if since is not None and since.tzinfo is None:
            raise ValueError("since must be a timezone-aware datetime")
        cutoff = None if since is None else since.timestamp()
        n = _clamp_limit(limit)
        return await self._db(lambda c: _list_streams(c, cutoff, n))

    async def list_events(
        self, *, status: str | None = None, stream_id: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        """Stored events, newest first, optionally only one status (e.g. ``"failed"``)."""
        n = _clamp_limit(limit)
        return await self._db(lambda c: _list_events(c, status, stream_id, n))

    async def prune(self, *, now: float | None = None) -> tuple[int, int]:
        """Delete records and finished events older than the retention. Returns
        ``(records, events)`` deleted. Pending events are never deleted."""
        cutoff = (time.time() if now is None else now) - self._retention
        records = events = 0
        while True:
            r, e = await self._db(lambda c: _prune_chunk(c, cutoff))
            records += r
            events += e
            if r < _PRUNE_CHUNK and e < _PRUNE_CHUNK:
                break
        if records or events:
            logger.info("pruned %d stream records and %d events", records, events)
        return records, events

    # -- database access ------------------------------------------------------------------

    async def _db(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._conn
        if conn is None:
            raise OutboxError("event store is closed")
        try:
            return await trio.to_thread.run_sync(fn, conn, limiter=self._db_limiter)
        except sqlite3.Error as exc:
            raise OutboxError(f"{self.path}: {_describe(exc)}") from exc

    async def _open(self) -> None:
        try:
            self._conn, self._lock_file, pending, moved = await trio.to_thread.run_sync(
                _open_db, self.path, limiter=self._db_limiter
            )
        except sqlite3.Error as exc:
            raise OutboxError(f"{self.path}: cannot open: {_describe(exc)}") from exc
        except OSError as exc:
            raise OutboxError(f"{self.path}: cannot open: {_describe(exc)}") from exc
        if moved is not None:
            self.moved_aside = moved.path

            def _n(value: int | None) -> str:
                return "an unknown number of" if value is None else str(value)

            logger.error(
                "records database %s is corrupt (%s): moved it to %s and started a fresh one;"
                " lost with it: %s undelivered events (their callbacks will not be sent) and"
                " %s stream records (the moved file is kept for inspection)",
                self.path,
                moved.error,
                moved.path,
                _n(moved.pending),
                _n(moved.records),
                extra={
                    "records_path": self.path,
                    "moved_to": moved.path,
                    "events_lost": moved.pending,
                    "records_lost": moved.records,
                },
            )
        for seq, stream_id, created_at in pending:
            self._enqueue(seq, stream_id, created_at)
        if pending:
            logger.info("outbox: %d undelivered events from a previous run", len(pending))
        self._refresh_oldest()
        self._accepting = True

    async def _close_db(self) -> None:
        conn, lock = self._conn, self._lock_file
        self._conn = self._lock_file = None
        if conn is not None:
            await trio.to_thread.run_sync(_close_db, conn, lock, limiter=self._db_limiter)

    # -- writer -------------------------------------------------------------------------

    async def _run_writer(
        self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        try:
            await self._write_loop()
        finally:
            self._writer_done.set()

    async def _write_loop(self) -> None:
        """Write what is queued, batch by batch, until stopped (``_writer_stop``) with an
        empty queue or after the final attempts of a failing writer."""
        while True:
            if not self._queue:
                if self._writer_stop:
                    return
                await self._writer_wake.wait()
                self._writer_wake = trio.Event()
                continue
            batch, self._queue = self._queue, []
            self._write_started = time.monotonic()
            try:
                results = await self._db(
                    functools.partial(_write_batch, items=batch, now=time.time())
                )
            except OutboxError as exc:
                # Keep the batch (in front, to keep the order) and try again: a full
                # disk may clear, and nothing is delivered that is not written.
                self._queue[:0] = batch
                self._write_failed(exc)
                if self._writer_stop:
                    self._final_failures += 1
                    if self._final_failures >= _FINAL_WRITE_ATTEMPTS:
                        return  # the close accounts for what is left (_account_unwritten)
                    await trio.sleep(_FINAL_WRITE_RETRY_S)
                else:
                    # A close wakes it early for its final attempts.
                    with trio.move_on_after(_WRITE_RETRY_S):
                        await self._writer_stopping.wait()
                continue
            except BaseException:
                # Cancelled before the thread started: nothing was written.
                self._queue[:0] = batch
                raise
            finally:
                self._write_started = None
            self._write_succeeded()
            self._after_commit(batch, results)

    def _write_failed(self, exc: OutboxError) -> None:
        """One ERROR line when writes start failing, then one summary a minute (not one
        per retry)."""
        self._m_write_errors.inc()
        now = time.monotonic()
        error = str(exc)
        if self._write_error is None:
            self._unhealthy_since = now
            self._failed_writes = 0
            self._next_summary = now + _SUMMARY_INTERVAL_S
            logger.error(
                "outbox writes failing: holding events and records in memory (%d now, at"
                " most %d) and retrying every %gs; /readyz answers 503 until a write"
                " succeeds: %s",
                self._held,
                self._max_held,
                _WRITE_RETRY_S,
                error,
                extra={"records_path": self.path},
            )
        elif now >= self._next_summary:
            self._next_summary = now + _SUMMARY_INTERVAL_S
            logger.error(
                "outbox writes still failing after %.0fs: %d failed attempts, %d items held"
                " in memory, %d events and %d records lost so far: %s",
                now - self._unhealthy_since,
                self._failed_writes + 1,
                self._held,
                self.events_lost,
                self.records_lost,
                error,
                extra={"records_path": self.path},
            )
        self._write_error = error
        self._failed_writes += 1

    def _write_succeeded(self) -> None:
        if self._write_error is None:
            return
        logger.warning(
            "outbox writes succeed again after %.1fs and %d failed attempts; the %d held"
            " items are written",
            time.monotonic() - self._unhealthy_since,
            self._failed_writes,
            self._held,
            extra={"records_path": self.path},
        )
        self._write_error = None
        self._final_failures = 0

    def _account_unwritten(self) -> None:
        """At close: what is still queued was never written. Each event and record is
        lost (counted, logged with its id); a delivery result only means its event is
        sent again on the next start."""
        results = 0
        for item in self._queue:
            if isinstance(item, StreamEvent | StreamRecord):
                self._lose(item, "shutdown")
            elif item.final:
                results += 1
        self._queue.clear()
        self._held = 0
        if results:
            logger.warning(
                "%d delivery results not written: those events stay pending in the outbox"
                " and are sent again on the next start",
                results,
            )
        if self.events_lost or self.records_lost:
            logger.error(
                "event store closed: %d events and %d stream records were lost in this run"
                " (each logged above with its id)",
                self.events_lost,
                self.records_lost,
                extra={"events_lost": self.events_lost, "records_lost": self.records_lost},
            )

    def _after_commit(self, batch: list[_Item], results: list[_WriteResult]) -> None:
        for item, result in zip(batch, results, strict=True):
            if isinstance(item, StreamEvent):
                self._held -= 1
                if item.callback_url:
                    self._queued_pending -= 1
                if isinstance(result, tuple):
                    if item.callback_url:
                        seq, body = result
                        row = None
                        if self._outstanding < _MAX_ROWS_IN_MEMORY:
                            # The common case (receiver up): deliver from memory, no
                            # read-back. Past the cap, rows are read back when due.
                            row = _Row(
                                seq, item.event_id, item.stream_id, item.event,
                                item.timestamp.timestamp(), item.callback_url,
                                item.callback_secret, body, "pending", 0,
                            )  # fmt: skip
                        self._enqueue(seq, item.stream_id, item.timestamp.timestamp(), row)
                elif result is not None:
                    logger.error(
                        "event not stored: %s",
                        result,
                        extra={"stream_id": item.stream_id, "event_id": item.event_id},
                    )
            elif isinstance(item, StreamRecord):
                self._held -= 1
                if result is None:
                    self._m_records.inc()
                else:
                    logger.error(
                        "stream record not stored: %s", result, extra={"stream_id": item.stream_id}
                    )
            elif item.final:
                self._depth -= 1
        self._committed_total += len(batch)
        committed, self._committed = self._committed, trio.Event()
        committed.set()
        self._notify_progress()

    def _notify_progress(self) -> None:
        progress, self._progress = self._progress, trio.Event()
        progress.set()

    # -- delivery: scheduling ------------------------------------------------------------

    def _enqueue(
        self, seq: int, stream_id: str, created_at: float, row: _Row | None = None
    ) -> None:
        self._outstanding += 1
        self._depth += 1
        if self._oldest_created is None or created_at < self._oldest_created:
            # O(1) here; the dispatcher recomputes it (once a second) as events finish.
            self._oldest_created = created_at
        queue = self._streams.get(stream_id)
        if queue is None:
            # A stream enters the ready queue only when it has no other pending event:
            # otherwise it is already scheduled (ready, in backoff or being worked).
            self._streams[stream_id] = deque([_Pending(seq, created_at, row)])
            self._ready_send.send_nowait(stream_id)
        else:
            queue.append(_Pending(seq, created_at, row))

    def _schedule(self, delay: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self._timers, (trio.current_time() + delay, next(self._tiebreak), fn))
        self._timer_wake.set()

    def _schedule_retry(self, stream_id: str, delay: float) -> None:
        self._schedule(delay, functools.partial(self._ready_send.send_nowait, stream_id))

    # -- delivery: origins ------------------------------------------------------------

    def _origin_failed(
        self, key: str, origin: _Origin, outcome: CallbackOutcome, probe: bool
    ) -> None:
        if probe or origin.failures == 0:
            # Attempts that were already in flight when the origin went down fail
            # together; only the first of them and each later probe extend the backoff.
            origin.failures += 1
            delay = self._retry_delay(origin.failures, outcome.retry_after)
            origin.down_until = trio.current_time() + delay
            self._schedule(delay, functools.partial(self._release_probe, key))
            if origin.failures == 1:
                logger.warning(
                    "callback receiver %s unreachable; holding its events: %s",
                    key,
                    outcome.error,
                    extra={"callback_origin": key},
                )

    def _origin_ok(self, key: str, origin: _Origin) -> None:
        if origin.failures:
            logger.info(
                "callback receiver %s is back; releasing %d streams",
                key,
                len(origin.parked),
                extra={"callback_origin": key},
            )
        del self._origins[key]
        for stream_id in origin.parked:
            self._ready_send.send_nowait(stream_id)
        origin.parked.clear()

    def _release_probe(self, key: str) -> None:
        origin = self._origins.get(key)
        if origin is None or origin.probe is not None:
            return
        if trio.current_time() < origin.down_until:
            return  # a later failure moved the deadline; its own timer will come
        self._expire_parked(origin)
        if origin.parked:
            origin.probe = origin.parked.popleft()
            self._probing[origin.probe] = key
            self._ready_send.send_nowait(origin.probe)
        # With nobody waiting the origin stays known-down: the next stream to send to it
        # becomes the probe at once, and its backoff keeps growing rather than resetting.

    def _expire_parked(self, origin: _Origin) -> None:
        """Fail the events of parked streams that are past ``give_up_after_s``: their
        receiver is down, so they are undeliverable, even if never tried themselves."""
        now = time.time()
        keep: deque[str] = deque()
        for stream_id in origin.parked:
            queue = self._streams[stream_id]
            while queue and queue[0].created_at + self._give_up_after <= now:
                head = queue[0]
                self._m_failed["expired"].inc()
                logger.warning(
                    "callback given up after %gs: receiver unreachable",
                    self._give_up_after,
                    extra={"stream_id": stream_id, "seq": head.seq},
                )
                error = head.last_error or "receiver unreachable"
                self._finish_head(
                    stream_id,
                    _Result(head.seq, True, "failed", head.attempts, error, "expired"),
                    requeue=False,
                )
            if stream_id in self._streams:
                keep.append(stream_id)
        origin.parked = keep

    def _finish_head(self, stream_id: str, result: _Result | None, *, requeue: bool = True) -> None:
        queue = self._streams[stream_id]
        queue.popleft()
        self._outstanding -= 1
        if not self._outstanding:
            self._oldest_created = None  # the gauge drops to 0 at once, not on next refresh
        if result is not None:
            self._queue.append(result)
            self._enqueued_total += 1
            self._writer_wake.set()
        if not queue:
            del self._streams[stream_id]
        elif requeue:
            # Back of the line: one event per turn keeps streams fair.
            self._ready_send.send_nowait(stream_id)
        self._notify_progress()

    async def _run_delivery(
        self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        try:
            with self._delivery_scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._run_dispatcher)
                    for _ in range(self._concurrency):
                        nursery.start_soon(self._run_worker)
                    task_status.started()
        finally:
            self._delivery_done.set()

    async def _run_dispatcher(self) -> None:
        while True:
            now = trio.current_time()
            while self._timers and self._timers[0][0] <= now:
                _, _, fn = heapq.heappop(self._timers)
                fn()
            if now >= self._next_refresh:
                # O(streams with a backlog): at most once a second, not on every wake.
                self._refresh_oldest()
                self._next_refresh = now + 1.0
            # Wake at the next due retry, and at least once a second for the age gauge.
            wake_at = now + 1.0
            if self._timers:
                wake_at = min(wake_at, self._timers[0][0])
            with trio.move_on_at(wake_at):
                await self._timer_wake.wait()
            self._timer_wake = trio.Event()

    async def _run_worker(self) -> None:
        async for stream_id in self._ready_recv:
            if self._draining:
                return
            self._inflight += 1
            try:
                await self._turn(stream_id)
            finally:
                self._turn_done()

    def _turn_done(self) -> None:
        self._inflight -= 1
        if self._draining and not self._inflight:
            self._idle.set()

    # -- delivery: one attempt -----------------------------------------------------------

    async def _turn(self, stream_id: str) -> None:
        try:
            await self._attempt_head(stream_id)
        finally:
            key = self._probing.pop(stream_id, None)
            if key is not None:
                origin = self._origins.get(key)
                if origin is not None and origin.probe == stream_id:
                    origin.probe = None
                # If this probe ended without a verdict on the origin (its event expired,
                # a read failed, the close cancelled it), let the next parked stream probe.
                self._release_probe(key)

    async def _attempt_head(self, stream_id: str) -> None:
        head = self._streams[stream_id][0]
        if head.row is None:
            try:
                row = await self._db(lambda c: _fetch_row(c, head.seq))
            except OutboxError as exc:
                logger.error("outbox read failed: %s", exc, extra={"stream_id": stream_id})
                self._schedule_retry(stream_id, self._retry_delay(head.attempts + 1, None))
                return
            if row is None or row.status != "pending":
                # Only possible if someone edited the database by hand: nothing to send.
                logger.warning(
                    "outbox row %d is no longer pending; skipped",
                    head.seq,
                    extra={"stream_id": stream_id},
                )
                self._depth -= 1
                self._finish_head(stream_id, None)
                return
            head.row = row
            head.attempts = row.attempts
        row = head.row
        wait = head.not_before - trio.current_time()
        if wait > 0:
            # The receiver asked (Retry-After) for this event to wait; an origin released
            # early by another stream's success does not override that.
            self._schedule_retry(stream_id, wait)
            return

        key = _origin_key(row.callback_url)
        origin = self._origins.get(key)
        if origin is not None:
            if origin.blocks(stream_id, trio.current_time()):
                # Its receiver is down: wait with the others rather than add an attempt.
                origin.parked.append(stream_id)
                return
            # Down, but its backoff has elapsed: this attempt is the probe.
            origin.probe = stream_id
            self._probing[stream_id] = key
        probe = origin is not None

        head.attempts += 1
        extra = {
            "stream_id": stream_id,
            "event_id": row.event_id,
            "event": row.event,
            "callback_url": row.callback_url,
            "attempt": head.attempts,
        }

        outcome = await self._post(row)

        if outcome.origin_down:
            origin = self._origins.setdefault(key, _Origin())
            self._origin_failed(key, origin, outcome, probe)
        elif key in self._origins:
            self._origin_ok(key, self._origins[key])

        if outcome.kind == "delivered":
            self._delivered_counter(row.event).inc()
            logger.debug("callback delivered", extra=extra)
            self._finish_head(
                stream_id,
                _Result(row.seq, True, "delivered", head.attempts, None, delivered_at=time.time()),
            )
            return
        if outcome.kind == "permanent":
            self._m_failed["permanent"].inc()
            logger.warning("callback failed permanently: %s", outcome.error, extra=extra)
            self._finish_head(
                stream_id,
                _Result(row.seq, True, "failed", head.attempts, outcome.error, "permanent"),
            )
            return
        remaining = row.created_at + self._give_up_after - time.time()
        if remaining <= 0:
            self._m_failed["expired"].inc()
            logger.warning(
                "callback given up after %d attempts (%gs): %s",
                head.attempts,
                self._give_up_after,
                outcome.error,
                extra=extra,
            )
            self._finish_head(
                stream_id,
                _Result(row.seq, True, "failed", head.attempts, outcome.error, "expired"),
            )
            return
        self._m_retried.inc()
        head.last_error = outcome.error
        if outcome.retry_after is not None:
            head.not_before = trio.current_time() + min(outcome.retry_after, self._max_backoff)
        logger.debug("callback attempt failed, will retry: %s", outcome.error, extra=extra)
        if self._write_error is None:
            # Persist the attempt count and error so list_events shows why it is stuck
            # (progress only: while writes fail it is not worth holding in memory).
            self._queue.append(_Result(row.seq, False, "pending", head.attempts, outcome.error))
            self._enqueued_total += 1
            self._writer_wake.set()
        if outcome.origin_down:
            # Back of the origin's line; a probe or the origin's recovery releases it.
            self._origins[key].parked.append(stream_id)
            return
        # The last attempt lands on the give-up deadline rather than past it.
        delay = min(self._retry_delay(head.attempts, outcome.retry_after), remaining)
        self._schedule_retry(stream_id, delay)

    def _retry_delay(self, attempts: int, retry_after: float | None) -> float:
        return retry_delay_s(
            attempts, retry_after, backoff_s=self._backoff, max_backoff_s=self._max_backoff
        )

    async def _post(self, row: _Row) -> CallbackOutcome:
        return await post_callback(
            self._client,
            row.callback_url,
            row.body,
            event_id=row.event_id,
            secret=row.callback_secret,
            sign=sign,
            user_agent=USER_AGENT,
            timeout_s=self._timeout,
            log=logger,
        )

    # -- pruning -----------------------------------------------------------------------------

    async def _run_pruner(self) -> None:
        while True:
            try:
                await self.prune()
            except OutboxError as exc:
                logger.error("pruning the outbox failed: %s", exc)
            await trio.sleep(self._prune_interval)

    # -- close -----------------------------------------------------------------------------

    async def _shutdown(self) -> None:
        self._accepting = False
        self._draining = True
        # Workers take no new turns; POSTs already on the wire get a moment to finish so
        # a clean restart does not send them twice.
        if self._inflight:
            with trio.move_on_after(_INFLIGHT_GRACE_S):
                await self._idle.wait()
        self._delivery_scope.cancel()
        await self._delivery_done.wait()
        # Commit what is still queued (events, records, delivery results).
        self._writer_stop = True
        self._writer_stopping.set()
        self._writer_wake.set()
        await self._writer_done.wait()
        if self._queue:
            # The writer task was cancelled with the rest of a cancelled daemon (a second
            # SIGTERM), and the streams' closing steps queued their final StopStream
            # events and records after that: write them here, in the shielded close.
            await self._write_loop()


@contextlib.asynccontextmanager
async def open_event_store(
    path: str,
    *,
    registry: CollectorRegistry,
    callback_timeout_s: float = 5.0,
    backoff_s: float = 1.0,
    max_backoff_s: float = 300.0,
    give_up_after_s: float = 86400.0,
    concurrency: int = 16,
    retention_s: float = 7 * 86400.0,
    http_client: httpx.AsyncClient | None = None,
    prune_interval_s: float = 3600.0,
    close_timeout_s: float = 5.0,
    max_held: int = _MAX_HELD,
) -> AsyncIterator[EventStore]:
    """Open the outbox at ``path`` (``":memory:"`` for a throwaway one) and run it.

    Raises :class:`OutboxError` if the file cannot be opened, is newer than this bridge,
    or is in use by another process. Undelivered events from a previous run are
    delivered again. On exit: see the module docstring (bounded by ``close_timeout_s``).
    """
    client = http_client or httpx.AsyncClient(
        timeout=httpx.Timeout(callback_timeout_s),
        limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
        follow_redirects=False,
    )
    try:
        store = EventStore(
            path,
            registry=registry,
            client=client,
            callback_timeout_s=callback_timeout_s,
            backoff_s=backoff_s,
            max_backoff_s=max_backoff_s,
            give_up_after_s=give_up_after_s,
            concurrency=concurrency,
            retention_s=retention_s,
            prune_interval_s=prune_interval_s,
            max_held=max_held,
        )
    except BaseException:
        if http_client is None:
            await client.aclose()
        raise
    body_error: BaseException | None = None
    try:
        await store._open()
        async with trio.open_nursery() as nursery:
            await nursery.start(store._run_writer)
            await nursery.start(store._run_delivery)
            nursery.start_soon(store._run_pruner)
            try:
                yield store
            except BaseException as exc:
                # Re-raised below, outside the nursery, so the caller sees its own
                # exception rather than an ExceptionGroup around it.
                body_error = exc
            finally:
                with trio.CancelScope(
                    shield=True, deadline=trio.current_time() + close_timeout_s
                ) as cs:
                    await store._shutdown()
                if cs.cancelled_caught:
                    logger.error(
                        "event store close timed out after %gs; %d queued items not written",
                        close_timeout_s,
                        len(store._queue),
                    )
                nursery.cancel_scope.cancel()
    finally:
        store._accepting = False
        store._account_unwritten()
        with trio.CancelScope(shield=True):
            try:
                await store._close_db()
            finally:
                if http_client is None:
                    await client.aclose()
                store._unregister()
    if body_error is not None:
        raise body_error
