"""The module the ``pytest11`` entry point names (``uwsgiconf_mules = uwsgiconf_mules._pytest_plugin``):
the plugin is :mod:`uwsgiconf_mules.contrib.testing.pytest_plugin`, whose hooks and fixtures this
module re-exports for pytest to find."""

from __future__ import annotations

from .contrib.testing.pytest_plugin import mules_eager, mules_outbox, mules_schedules, pytest_addoption

__all__ = ["mules_eager", "mules_outbox", "mules_schedules", "pytest_addoption"]
