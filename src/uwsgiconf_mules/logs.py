"""Log records of tasks, with the mule and the task they come from: the public path of
:mod:`uwsgiconf_mules.runtime.logs` (``LOGGING`` configurations name
``uwsgiconf_mules.logs.MuleFilter``), which it re-exports."""

from __future__ import annotations

from .runtime.logs import FORMAT, NO_TASK, RUNNING, MuleFilter, MuleFormatter, add_runner, current_task

__all__ = ["FORMAT", "NO_TASK", "RUNNING", "MuleFilter", "MuleFormatter", "add_runner", "current_task"]
