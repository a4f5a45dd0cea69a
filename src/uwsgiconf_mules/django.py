"""The Django task backend's public path: settings name ``uwsgiconf_mules.django.MulesBackend`` (in
``TASKS``) and the app ``uwsgiconf_mules.django`` (in ``INSTALLED_APPS``, app label
``uwsgiconf_mules``), and calls queued since version 0.1 name its runner ``uwsgiconf_mules.django:_run``.
The backend is :mod:`uwsgiconf_mules.contrib.django`, which this module re-exports."""

from __future__ import annotations

from .contrib.django import MulesBackend, MulesConfig, _run  # noqa: F401 - _run: the task key's module is this one

__all__ = ["MulesBackend", "MulesConfig"]
