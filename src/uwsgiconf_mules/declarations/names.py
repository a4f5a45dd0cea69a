"""The names and numbers a declaration is written with, on both sides: environment variables, module
paths the config names, metric names, and the limits of uWSGI and Linux it is checked against."""

from __future__ import annotations

import os

RECORD_ENV = "UWSGICONF_MULES"
"""Environment variable that carries the declarations record into every uWSGI process."""
CONFIG_ENV = "UWSGICONF_MULES_CONFIG"
"""Environment variable naming the project's configuration module (``uwsgicfg.py``, a path or a
module name, optionally ``:SECTION``), whose declarations the runtime uses outside uWSGI when no
record is set: development servers and tests then refuse undeclared targets as uWSGI does."""
RECORD_VERSION = "v2"

DISPATCH_MULE = os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(__file__))), "dispatch_mule.py")
"""The ``mule`` value of a dispatch mule: the path of the script that runs the project's loop.

A path, not ``uwsgiconf_mules.runtime:mule_loop``: uWSGI 2.0.x crashes a ``module:callable``
mule under ``--lazy-apps``. The config therefore names this installation of the package:
compile it where uWSGI runs it (same environment), as ``uwsgiconf run`` does.
"""

RUNTIME_MODULE = "uwsgiconf_mules.runtime"
"""The module the builders import in the uWSGI master (``shared-import``)."""

MULE_MODULE = "uwsgiconf_mules.dispatch_mule"
"""The module the builders import in the uWSGI master too when there are dispatch mules
(``shared-import``): it imports the mule loop, so that a mule forked from the master imports
nothing more (a deploy that replaced the package on disk cannot give a respawned mule a loop of
another version than its runtime). A config compiled by 0.1 names only the runtime: its mules
import the loop when they start."""

MULE_COUNTERS = ("queued", "started", "succeeded", "failed", "spooled", "dead", "run_ms")
"""Counters of a dispatch mule, as uWSGI metrics ``mule.<id>.<counter>`` (programmed mules: ``queued``)."""
MULE_GAUGES = ("queue_bytes", "running_ms", "pid")
"""Gauges of a dispatch mule, as uWSGI metrics ``mule.<id>.<gauge>``."""

SPOOL_GAUGE = "spool.unusable"
"""The gauge that is 1 while the spool cannot keep calls (the senders refuse them), 0 otherwise."""

DEFAULT_SEND_TIMEOUT = 5.0
"""Seconds a sender keeps retrying while a mule queue is full before raising ``DeliveryError``."""

C_INT_MAX = 2**31 - 1
"""uWSGI reads ``mule-msg-size``, ``mule-harakiri`` and ``mule-reload-mercy`` as a C ``int``
(``uwsgi_opt_set_int``: ``atoi``): a larger value wraps (2**40 reads as 0)."""

QUEUE_FDS = 4
"""Descriptors the uWSGI master holds for every mule and every farm: the socket pairs of its queue and
of its signals (``uwsgi_setup_mules_and_farms`` in uWSGI's core/mule.c, which sets no limit of its own
on the count). Measured on uWSGI 2.0.31: a master with 4 mules and 2 farms holds 39 descriptors, 16
more with 4 more mules, 16 more with 4 more farms; each mule and worker holds one per mule and about
three per farm (every process inherits them)."""
BASE_FDS = 16
"""The master's other descriptors (standard streams, its pipes, a socket, the log), measured as above."""
FD_CEILING = 2**20
"""The most descriptors one Linux process may have (``fs.nr_open``, 1,048,576 unless the kernel is
tuned, and ``ulimit -n`` cannot go past it): more mules and farms than that leaves uWSGI's master
unable to make their queues."""
MAX_MULES = (FD_CEILING - BASE_FDS) // QUEUE_FDS
"""The most mules (and farms, with them) a uWSGI instance can run; see :data:`FD_CEILING`."""

ENV_MAX = 131071
"""The longest ``NAME=value`` Linux passes to a program it starts (``MAX_ARG_STRLEN``, 32 pages, less the
NUL). uWSGI reloads by running itself again (``execvp``) with the variables its ``env`` options set: with
a longer record, uWSGI 2.0.31 logs ``execvp(): Argument list too long`` at its first graceful reload and
is gone (seen: 131,071 bytes reload, 131,072 do not)."""


def master_fds(mules: int, farms: int) -> int:
    """About how many file descriptors the uWSGI master needs for ``mules`` mules and ``farms`` farms.

    :param mules: How many mules.
    :param farms: How many farms (of mules; routed farms spend none).
    """
    return BASE_FDS + QUEUE_FDS * (mules + farms)
