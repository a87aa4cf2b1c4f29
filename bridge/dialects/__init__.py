"""Dialects: sans-IO wire protocols, bytes or messages in, events out, and back."""

from ._events import (
    Audio,
    Clear,
    Cleared,
    Connected,
    Drained,
    Dtmf,
    Event,
    Hangup,
    Mark,
    Message,
    Start,
    Stats,
    StatsRequest,
    Stop,
)

__all__ = [
    "Audio",
    "Clear",
    "Cleared",
    "Connected",
    "Drained",
    "Dtmf",
    "Event",
    "Hangup",
    "Mark",
    "Message",
    "Start",
    "Stats",
    "StatsRequest",
    "Stop",
]
