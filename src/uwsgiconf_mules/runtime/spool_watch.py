"""The spool, watched by each worker: it keeps the calls still queued at a reload or stop; while it
cannot (see :func:`uwsgiconf_mules.protocol.spool.problem`: a directory others could change, a link, a
full disk), offloaded calls to dispatch mules raise :class:`~uwsgiconf_mules.errors.DeliveryError`
naming the problem rather than return True. Each worker checks the spool once a second in a thread
of its own (:func:`watch_spool`, started by the first offloaded call) and, when what it finds
changes, has the offloaded functions resolve their route again: the calls themselves check nothing.
"""

from __future__ import annotations

import os
import time

from ..declarations import SPOOL_GAUGE
from ..protocol import spool as _spool
from ..protocol.limits import socket_message_limit
from . import instance as _instance

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: workers and mules import this module, keep it cheap
if TYPE_CHECKING:
    from ..declarations import Declarations

SPOOL_CHECK_EVERY = 1.0
"""Seconds between two checks of the spool by a worker (see :func:`watch_spool`)."""

spool_problem: str | None = None
"""Why the spool cannot keep calls, as this process last found; None while it can."""
spool_full: str | None = None
"""Why the spool takes no more delayed calls (its queued and delayed calls hold its limit), as this
process last found; None while it takes them (see :func:`delayed_refusal`)."""
_watching = False  # whether this process runs its spool watcher
_held: list[tuple[str, _spool.Spool, object]] = []  # [(spool dir, Spool, delayed.Held)], made at the first check


SMALLEST_QUEUED = 768
"""Bytes of queue buffer the smallest queued message takes (a kernel buffer): a queue holds at most
its size divided by this many messages (about 278 by default)."""


def spool_room(declarations: Declarations) -> tuple[int, int]:
    """What the spool's disk must have free, (bytes, files): what the dispatch mules' queues can
    hold (a full queue of each mule and farm), within the spool's limit.

    :param declarations: This instance's declarations.
    """
    queues = len(declarations.dispatchers) + len(declarations.farms)
    size = socket_message_limit(declarations.msg_size)
    return min(size * queues, _spool.DEFAULT_LIMIT), size // SMALLEST_QUEUED * queues


def spool_refusal(declarations: Declarations | None, mule_ids: tuple[int, ...]) -> str | None:
    """Why calls to ``mule_ids`` cannot be sent now (the spool cannot keep them), or None.

    :param declarations: This instance's declarations, or None outside uWSGI.
    :param mule_ids: The target's mules.
    """
    problem = spool_problem
    if problem is None or declarations is None or not set(mule_ids) & set(declarations.dispatchers):
        return None
    return (f"{problem}; the mules could not keep queued calls across a reload or stop, so none is sent "
            "(fix it, see `uwsgiconf-mules check`: sending resumes within a second)")


def watch_spool() -> bool:
    """Start this process's spool watcher: a check now, then one every :data:`SPOOL_CHECK_EVERY`
    seconds by a thread (once; never in the master, whose threads a fork would not carry).

    :returns: Whether the watcher runs in this process.
    """
    global _watching
    uwsgi = _instance.uwsgi
    declarations = _instance.declarations()
    if _watching or uwsgi is None or declarations is None or declarations.spool_dir is None:
        return _watching
    if uwsgi.masterpid() == os.getpid():
        return False
    _watching = True
    check_spool(declarations)
    from .. import _threads  # when first needed: a process that never sends starts no thread

    _threads.start(_watch, declarations)
    return True


def check_spool(declarations: Declarations) -> None:
    """Check the spool once; when what is found changed, say so and have offloaded functions
    resolve their route again.

    :param declarations: This instance's declarations.
    """
    global spool_problem
    assert declarations.spool_dir is not None
    found = _spool.problem(declarations.spool_dir, *spool_room(declarations))
    if declarations.stats is not None and declarations.dispatchers:  # every check: a mule may have set it
        _instance.uwsgi.metric_set(SPOOL_GAUGE, int(found is not None))
    check_full(declarations.spool_dir)
    if found == spool_problem:
        return
    spool_problem = found
    from . import tasks as _tasks

    if found is not None:
        _tasks.log().error("uwsgiconf-mules: %s: offloaded calls to dispatch mules are refused (DeliveryError) "
                           "while the spool cannot keep them: %s", _who(), found)
    else:
        _tasks.log().warning("uwsgiconf-mules: %s: the spool %s can keep calls again; offloaded calls are sent",
                             _who(), declarations.spool_dir)
    for cache in list(_instance._caches):
        refresh = getattr(cache, "_refresh", None)
        if refresh is not None:
            refresh()


def check_full(spool_dir: str) -> None:
    """Count what the spool holds (queued and delayed calls) against its limit, and set
    :data:`spool_full` (said in the log when it changes).

    :param spool_dir: The spool's directory.
    """
    global spool_full
    from ..protocol.spool import delayed as _delayed

    if not _held or _held[0][0] != spool_dir:
        spool = _spool.Spool(spool_dir)
        _held[:] = [(spool_dir, spool, _delayed.Held(spool))]
    _, spool, held = _held[0]
    try:
        holds = spool.size(("queue",)) + held.total()  # type: ignore[attr-defined]
    except OSError:
        return  # the spool's problem, if any, is said by check_spool
    found = (f"the spool {spool_dir} holds its limit of {spool.limit} bytes ({holds} bytes of queued and delayed "
             "calls)") if holds >= spool.limit else None
    if found == spool_full:
        return
    spool_full = found
    from . import tasks as _tasks

    if found is not None:
        _tasks.log().error("uwsgiconf-mules: %s: delayed calls are refused (DeliveryError) while %s", _who(), found)
    else:
        _tasks.log().warning("uwsgiconf-mules: %s: the spool %s takes delayed calls again", _who(), spool_dir)


def delayed_refusal() -> str | None:
    """Why a delayed call (``later``/``at``, a retry) cannot be kept now, or None: this process's
    watcher checks it once a second (started here, when it is not yet)."""
    if not _watching:
        watch_spool()
    return spool_full


def spool_gauge(declarations: Declarations) -> None:
    """Set the :data:`~uwsgiconf_mules._declarations.SPOOL_GAUGE` metric from a check of the spool
    (a dispatch mule's sampler: the gauge holds even where no worker has sent yet).

    :param declarations: This instance's declarations, with a spool.
    """
    assert declarations.spool_dir is not None
    found = _spool.problem(declarations.spool_dir, *spool_room(declarations))
    _instance.uwsgi.metric_set(SPOOL_GAUGE, int(found is not None))


def _who() -> str:
    uwsgi = _instance.uwsgi
    try:
        return f"worker {int(uwsgi.worker_id())}" if uwsgi.worker_id() else f"process {os.getpid()}"
    except Exception:
        return f"process {os.getpid()}"


def _watch(declarations: Declarations) -> None:
    while True:
        time.sleep(SPOOL_CHECK_EVERY)
        try:
            check_spool(declarations)
        except Exception:  # never the end of the watcher
            from . import tasks as _tasks

            _tasks.log().exception("uwsgiconf-mules: the spool check failed")
