"""Counters: what each mule did and how full the queues are, in uWSGI's metrics subsystem.

Counters exist only when the builders declared a stats server (``set_mules_params(stats=...)``):
they then emit ``enable-metrics``, the ``stats`` server and one ``metric`` option per counter
(:meth:`~uwsgiconf_mules.declarations.Declarations.metric_names`), because uWSGI lets processes
update metrics but never create them. The names:

* ``mule.<id>.queued`` and ``farm.<name>.queued``: messages queued for the target (sender side);
* ``mule.<id>.started``, ``succeeded``, ``failed``, ``spooled`` (kept at a stop or reload),
  ``dead`` (dead letters), ``run_ms`` (time spent running calls): a dispatch mule's counters;
* gauges: ``mule.<id>.queue_bytes`` and ``farm.<name>.queue_bytes`` (see :func:`queue_bytes`; -1
  for a mule's queue not measured yet),
  ``mule.<id>.running_ms`` (how long the running call has run, 0 when idle), ``mule.<id>.pid``.

uWSGI keeps metrics in the master's shared memory: they outlive mule respawns, show on the stats
server (``metrics``) and are pushed by ``stats-push`` / ``carbon`` with no code of ours in between.

A ``uwsgi.metric_inc`` costs 0.65-0.9 µs (it looks the name up in a linked list and takes a
process-shared lock), too much per call on the hot paths, so each process counts in plain Python
lists and a thread of its own adds the differences to the uWSGI metrics every
:data:`FLUSH_EVERY` second: the stats server lags by at most that. The thread starts with the
first count of a worker, or with the dispatch mule's loop (never in the master).

Per-task counters cannot be uWSGI metrics: task keys are not known when the config is written.
Each dispatch mule writes them, with the call it is running, to ``<spool>/status/<mule id>.json``
(at most once per :data:`FLUSH_EVERY`), where ``uwsgiconf-mules top`` reads them; they continue
across the mule's respawns.
"""

from __future__ import annotations

import os
import time

from ..protocol import spool as _spool
from . import instance as _instance

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: workers and mules import this module, keep it cheap
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from ..declarations import Declarations

FLUSH_EVERY = 1.0
"""Seconds between two flushes of a process's counts into the uWSGI metrics."""
STATUS_REFRESH = 2.0
"""Seconds after which a mule writes its status file again even when nothing changed (``top``
trusts what it says of the running call for 5 seconds)."""

_cells: dict[str, list[int]] = {}  # uWSGI metric name -> [counted, flushed]
_samplers: list[Callable[[], None]] = []
_started = False  # whether this process runs the flushing thread


def enabled() -> bool:
    """Whether counters are on: under uWSGI, with a declared stats server."""
    declarations = _instance.declarations()
    return _instance.uwsgi is not None and declarations is not None and declarations.stats is not None


def target_name(dest: int | bytes) -> str:
    """The ``queued`` metric of a destination.

    :param dest: A mule id, or a farm name as bytes.
    """
    return f"mule.{dest}.queued" if isinstance(dest, int) else f"farm.{dest.decode()}.queued"


def cell(name: str) -> list[int]:
    """The count of uWSGI metric ``name`` in this process (``[counted, flushed]``).

    :param name: A declared metric.
    """
    found = _cells.get(name)
    if found is None:
        found = _cells[name] = [0, 0]
    return found


def counting(send: Callable[[bytes, int | bytes], bool], dest: int | bytes) -> Callable[[bytes, int | bytes], bool]:
    """``send`` (``uwsgi.mule_msg``), counting what it queued for ``dest``.

    :param send: The sending function.
    :param dest: Where it sends.
    """
    count = cell(target_name(dest))

    def counted(message: bytes, dest: int | bytes) -> bool:
        if send(message, dest):
            count[0] += 1
            if not _started:
                start()
            return True
        return False

    return counted


def queued(dest: int | bytes) -> None:
    """Count one message queued for ``dest`` by a path other than :func:`counting` (a retry
    after a full queue, ``Mule.send``); nothing when the counters are off.

    :param dest: A mule id, or a farm name as bytes.
    """
    if enabled():
        cell(target_name(dest))[0] += 1
        if not _started:
            start()


def start(sampler: Callable[[], None] | None = None) -> bool:
    """Start this process's flushing thread (once; never in the master, whose threads a fork
    would not carry), and add ``sampler`` to what it runs after each flush.

    :param sampler: A function run by the thread every :data:`FLUSH_EVERY` second.
    :returns: Whether the thread runs in this process.
    """
    global _started
    if sampler is not None:
        _samplers.append(sampler)
    uwsgi = _instance.uwsgi
    if _started or uwsgi is None or uwsgi.masterpid() == os.getpid():
        return _started
    _started = True
    import atexit

    atexit.register(flush)  # what a worker counted in its last second, when uWSGI stops or reloads it
    from .. import _threads  # when first needed: a process that never sends starts no thread

    _threads.start(_loop)
    return True


def _loop() -> None:
    while True:
        time.sleep(FLUSH_EVERY)
        flush()


def flush() -> None:
    """Add what was counted since the last flush to the uWSGI metrics; run the samplers."""
    uwsgi = _instance.uwsgi
    for name, count in list(_cells.items()):
        delta = count[0] - count[1]
        if delta:
            count[1] += delta
            uwsgi.metric_inc(name, delta)
    for sampler in list(_samplers):
        try:
            sampler()
        except Exception:
            from .tasks import log

            log().exception("uwsgiconf-mules: counters of this process could not be sampled")


# -- queue depth ---------------------------------------------------------------------------------

SIOCOUTQ = 0x5411  # TIOCOUTQ; termios is not imported for one constant
_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_UDIAG_SHOW_PEER = 0x04
_UNIX_DIAG_PEER = 2


def peer_inode(sock: Any) -> int:
    """The inode of the other end of a unix socket pair, asked of the kernel's sock_diag; 0 when
    it cannot be known.

    :param sock: One end of a socket pair.
    """
    import _socket
    import struct

    inode = os.fstat(sock.fileno()).st_ino
    request = struct.pack("=BBHIIIII", _socket.AF_UNIX, 0, 0, 0xFFFFFFFF, inode, _UDIAG_SHOW_PEER,
                          0xFFFFFFFF, 0xFFFFFFFF)
    try:
        netlink = _socket.socket(_socket.AF_NETLINK, _socket.SOCK_RAW, _NETLINK_SOCK_DIAG)
    except OSError:
        return 0
    try:
        netlink.settimeout(1.0)
        netlink.send(struct.pack("=IHHII", 16 + len(request), _SOCK_DIAG_BY_FAMILY, 1, 1, 0) + request)
        data = netlink.recv(8192)
    except OSError:
        return 0
    finally:
        netlink.close()
    length, kind = struct.unpack_from("=IH", data)
    offset = 32  # nlmsghdr (16) + unix_diag_msg (16)
    while kind == _SOCK_DIAG_BY_FAMILY and offset + 4 <= min(length, len(data)):
        size, attribute = struct.unpack_from("=HH", data, offset)
        if attribute == _UNIX_DIAG_PEER and size >= 8:
            return int(struct.unpack_from("=I", data, offset + 4)[0])
        if size < 4:
            break
        offset += (size + 3) & ~3
    return 0


def queue_bytes(sock: Any) -> int:
    """Bytes the kernel holds for the messages waiting in a queue, read on its sending end
    (``SIOCOUTQ``): each message counts with its buffer overhead (768 bytes for a message of up
    to about 250 bytes on Linux 6, 2,304 for 1 KiB). ``FIONREAD`` on the receiving end gives only
    the size of the next message, and Linux tells the number of datagrams queued nowhere.

    :param sock: The sending end of a queue.
    """
    import fcntl
    import struct

    return int(struct.unpack("i", fcntl.ioctl(sock.fileno(), SIOCOUTQ, b"\0\0\0\0"))[0])


def sending_ends(found: dict[int | bytes, Any]) -> dict[int | bytes, Any]:
    """The sending end of every queue a dispatch mule reads directly.

    :param found: Destination -> the receiving socket (``Queues`` found them with probes).
    """
    from ..protocol.limits import packet_sockets

    by_inode = {os.fstat(sock.fileno()).st_ino: sock for sock in packet_sockets()}
    ends = {}
    for dest, sock in found.items():
        end = by_inode.pop(peer_inode(sock), None)
        if end is not None:
            ends[dest] = end
    for sock in by_inode.values():
        sock.close()
    return ends


# -- a dispatch mule's counters ------------------------------------------------------------------

class MuleCounters:
    """The counters of one dispatch mule: per task, in cells the mule loop updates, flushed into
    the mule's uWSGI metrics and its status file by :func:`flush`.

    A task's cell is ``[started, failed, seconds running calls]``; :attr:`running` is ``[the cell
    of the call running (None when idle), perf_counter() when the call began, perf_counter() when
    the time not yet in its cell began]``: the mule adds up the time of a streak of calls of one
    task when it ends. The counted fast path keeps each task's cell in its entries (see
    ``_dispatch._entry``).

    :param mule_id: This mule's id.
    :param declarations: This instance's declarations.
    :param status_file: Where to write the status file (:meth:`.Spool.status_file`), or None.
    """

    def __init__(self, mule_id: int, declarations: Declarations, status_file: str | None) -> None:
        self.mule_id = mule_id
        self.tasks: dict[str, list[Any]] = {}  # key -> cell
        self.running: list[Any] = [None, 0.0, 0.0]
        self.spooled = 0
        self.dead = 0
        self._flushed = {"started": 0, "succeeded": 0, "failed": 0, "spooled": 0, "dead": 0, "run_ms": 0}
        self._farms = [farm.name for farm in declarations.farms_of(mule_id)]
        self._status = status_file
        self._ends: dict[int | bytes, Any] = {}
        self._ends_for = 0  # how many queues were read directly when the sending ends were looked for
        self._queues: Any = None
        self._written: tuple[float, Any] = (0.0, None)  # when the status file was written, and what
        self._load()
        totals = self.totals()
        for name in ("started", "succeeded", "failed", "run_ms"):  # the previous process flushed them
            self._flushed[name] = totals[name]

    def _load(self) -> None:
        """Continue the per-task counts of this mule's previous process."""
        if self._status is None:
            return
        import json

        try:
            with open(self._status) as handle:
                tasks = json.load(handle).get("tasks", {})
            for key, counts in tasks.items():
                self.tasks[key] = [int(counts["started"]), int(counts["failed"]), counts["run_ms"] / 1000]
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            pass

    def cell(self, key: bytes) -> list[Any]:
        """The cell of the task ``key``.

        :param key: The task key.
        """
        text = key.decode("utf-8", "replace")
        found = self.tasks.get(text)
        if found is None:
            found = self.tasks[text] = [0, 0, 0.0]
        return found

    def watch(self, queues: Any) -> None:
        """Measure the depth of these queues (a ``_queues.Queues``) from now on.

        :param queues: The mule's queues.
        """
        self._queues = queues

    def totals(self) -> dict[str, Any]:
        """This process's counts since the mule's first start (from the status file)."""
        now = time.perf_counter()
        cells = [(key, cell[0], cell[1], cell[2], cell) for key, cell in list(self.tasks.items())]
        # Read after the cells: a streak that ends in between is missed once, never counted twice.
        running_cell, since, unadded = self.running
        running_for = max(0.0, now - since) if running_cell is not None else 0.0
        started = failed = running = 0
        seconds = 0.0
        running_key = None
        tasks = {}
        for key, cell_started, cell_failed, added, cell in cells:
            started += cell_started
            failed += cell_failed
            cell_seconds = added
            if cell is running_cell:
                running, running_key = 1, key
                cell_seconds += max(0.0, now - unadded)
            seconds += cell_seconds
            tasks[key] = {"started": cell_started, "failed": cell_failed,
                          "succeeded": cell_started - cell_failed - (cell is running_cell),
                          "run_ms": int(cell_seconds * 1000)}
        return {"started": started, "failed": failed, "succeeded": started - failed - running,
                "run_ms": int(seconds * 1000), "spooled": self.spooled, "dead": self.dead,
                "running": running_key, "running_ms": int(running_for * 1000), "tasks": tasks}

    def sample(self) -> None:
        """Add the counts since the last sample to this mule's uWSGI metrics, set its gauges and
        write its status file."""
        uwsgi = _instance.uwsgi
        totals = self.totals()
        prefix = f"mule.{self.mule_id}."
        for name, flushed in self._flushed.items():
            delta = totals[name] - flushed
            if delta > 0:
                self._flushed[name] = totals[name]
                uwsgi.metric_inc(prefix + name, delta)
        uwsgi.metric_set(prefix + "running_ms", totals["running_ms"])
        uwsgi.metric_set(prefix + "pid", os.getpid())
        depths = self.depths()
        if self.mule_id not in depths:
            uwsgi.metric_set(prefix + "queue_bytes", -1)  # not measured (yet): never a false 0
        for dest, depth in depths.items():
            name = f"mule.{dest}.queue_bytes" if isinstance(dest, int) else f"farm.{dest.decode()}.queue_bytes"
            uwsgi.metric_set(name, depth)
        self._write(totals, depths)

    def depths(self) -> dict[int | bytes, int]:
        """Bytes waiting in each queue this mule reads directly (see :func:`queue_bytes`)."""
        queues = self._queues
        if queues is None or not queues.direct:
            return {}
        if self._ends_for != len(queues.direct):  # looked for once per queue found, not every second
            self._ends_for = len(queues.direct)
            for end in self._ends.values():
                end.close()
            self._ends = sending_ends(dict(queues._found))
        depths = {}
        for dest, end in self._ends.items():
            try:
                depths[dest] = queue_bytes(end)
            except OSError:
                continue
        return depths

    def _write(self, totals: dict[str, Any], depths: dict[int | bytes, int]) -> None:
        if self._status is None:
            return
        import json

        status = {
            "mule": self.mule_id, "pid": os.getpid(), "farms": self._farms, "running": totals["running"],
            "queue_bytes": {str(dest) if isinstance(dest, int) else dest.decode(): depth
                            for dest, depth in depths.items()},
            "tasks": totals["tasks"],
        }
        now = time.time()
        written, previous = self._written
        if status == previous and now - written < STATUS_REFRESH:  # an idle mule writes every few seconds
            return
        self._written = (now, dict(status))
        status["time"] = now
        temporary = f"{self._status}.{os.getpid()}.tmp"
        with open(temporary, "w") as handle:
            json.dump(status, handle)
        os.replace(temporary, self._status)


def mule_counters(mule_id: int, declarations: Declarations | None, spool_path: str | None) -> MuleCounters | None:
    """The counters of this dispatch mule, with their flushing thread started; None when the
    counters are off.

    :param mule_id: This mule's id.
    :param declarations: This instance's declarations.
    :param spool_path: The spool's directory, or None when there is no usable spool.
    """
    if declarations is None or not enabled():
        return None
    status_file = None
    if spool_path is not None:
        spool = _spool.Spool(spool_path)
        try:
            os.makedirs(spool.status_dir, mode=0o700, exist_ok=True)
            status_file = spool.status_file(mule_id)
        except OSError:
            pass
    counters = MuleCounters(mule_id, declarations, status_file)
    _instance.uwsgi.metric_set(f"mule.{mule_id}.pid", os.getpid())  # at once: top shows it from the start
    start(counters.sample)
    if declarations.spool_dir is not None:
        from functools import partial

        from .spool_watch import spool_gauge

        start(partial(spool_gauge, declarations))
    return counters
