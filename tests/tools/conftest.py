"""The tools are tested against a real daemon too: its fixtures, shared with tests/daemon."""

from __future__ import annotations

from ..daemon.conftest import bridge_logs, daemon_factory

__all__ = ["bridge_logs", "daemon_factory"]
