"""Argument types the tools' command lines share (argparse ``type=``): each raises
``ArgumentTypeError`` with a message that says what was wrong."""

from __future__ import annotations

import argparse

from .._durations import parse_duration

__all__ = ["at_least_1", "duration", "positive_float"]


def duration(text: str) -> float:
    """Seconds: ``10s``, ``500ms``, ``2m`` (the config's grammar) or a bare number."""
    try:
        value = float(text)  # a bare number is seconds
    except ValueError:
        try:
            value = parse_duration(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is negative")
    return value


def at_least_1(text: str) -> int:
    """A whole number of at least 1 (counts: calls, frames)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def positive_float(text: str) -> float:
    """A number above 0 (rates, frequencies)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, not {text}")
    return value
