"""Test modes for offloaded calls outside uWSGI (``capture``, ``eager``): the public path of
:mod:`uwsgiconf_mules.contrib.testing.modes`, which it re-exports."""

from __future__ import annotations

from .contrib.testing.modes import Offload, Outbox, Sent, capture, eager
from .contrib.testing.schedules import ScheduleClock, Tick, run_scheduled, scheduled

__all__ = ["Offload", "Outbox", "ScheduleClock", "Sent", "Tick", "capture", "eager", "run_scheduled", "scheduled"]
