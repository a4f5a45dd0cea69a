"""The function every RQ job of a farm routed to RQ names, ``uwsgiconf_mules.remote.run`` (in jobs
already in Redis since version 0.1), and the job class of the workers,
``uwsgiconf_mules.remote.Job``: the public path of :mod:`uwsgiconf_mules.contrib.rq.jobs`, which it
re-exports. Importing it imports RQ: only RQ workers import it."""

from __future__ import annotations

from .contrib.rq.jobs import REFUSED_FIELDS, Job, run

__all__ = ["REFUSED_FIELDS", "Job", "run"]
