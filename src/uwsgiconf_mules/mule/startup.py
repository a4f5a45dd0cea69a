"""What a dispatch mule does once when it starts, before it runs any call; and, in the master, what
makes its start cheap.

uWSGI runs ``uwsgiconf_mules/dispatch_mule.py`` as each dispatch mule's ``__main__`` -- also under
``--lazy-apps``, where a ``package.module:callable`` mule crashes uWSGI 2.0.x (its Python loaders
are not set up in mules then). The config's ``shared-import`` imports the same file under its own
name in the master, before the fork: it loads the loop, and runs :func:`in_master`.

In the master (:func:`in_master`): a mule shares the master's pages until it writes in one, so what
it needs is made there, once, and shared (benchmarks/README.md, "An idle mule's memory"):

- the modules a mule imports at start or to log (``logging`` and the mule's formatter, ``json``,
  ``fcntl``), and ``random``, which uWSGI's post-fork step imports in every worker and mule;
- :func:`freeze_at_first_collection`: a mule whose first collection comes before its script
  freezes the master's objects (uWSGI's post-fork step allocates: when the master's counts were at a
  threshold at the fork, a collection of the young generations runs there) freezes them first.

In the mule, its script first moves every object the master made to the collector's permanent
generation (``gc.freeze()``): the mule's collections never write in the pages of those objects.
Then:

1. The declared start-up hook (``set_mules_params(mule_init='package.module:function')``).
2. ``django.setup()`` when ``DJANGO_SETTINGS_MODULE`` is set and Django is not set up yet: under
   ``--lazy-apps`` uWSGI loads the app (whose WSGI module sets Django up) in workers only, and a
   task module importing models would fail with ``AppRegistryNotReady``. In the pre-fork mode the
   mule inherits a Django already set up from the master, and nothing is done.
3. Logging, when nobody configured it (see :mod:`uwsgiconf_mules.runtime.logs`): at once when
   ``logging`` is imported already (by the master, the app, the hook, Django), otherwise as soon
   as anything imports it (:class:`LoggingWatch`: a task, the runtime to say something).

A step that fails is logged on one line naming it, with its traceback, and the mule goes on:
a mule that exits at start is respawned by uWSGI at once, again and again, while calls pile up in
its queue until senders get ``DeliveryError``; running, it keeps taking calls, and a call whose
task module cannot be imported without the step is refused with a log line and kept as a dead
letter in the spool, to be replayed after the fix.
"""

from __future__ import annotations

import gc
import os
import sys

from ..runtime import instance as _instance, tasks as _tasks

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: mules import this module, keep it cheap
if TYPE_CHECKING:
    from typing import Any

    from ..declarations import Declarations
    from ..protocol import spool as _spool

DJANGO_SETTINGS = "DJANGO_SETTINGS_MODULE"

_first: list[frozenset[int]] = []  # ids of the dispatch mules, until this process's first collection


def _at_first_collection(phase: str, info: dict[str, int]) -> None:
    """A ``gc.callbacks`` item: in a dispatch mule, at its first collection, before it runs, the
    objects made so far (the master's) move to the permanent generation; in a worker, nothing."""
    if not _first or phase != "start":
        return
    uwsgi = _instance.uwsgi
    mule = uwsgi.mule_id() if uwsgi is not None else 0
    if mule:
        if mule in _first.pop():
            gc.freeze()  # what the dispatch script does first, earlier: the collection finds nothing young
    elif uwsgi is None or uwsgi.worker_id():
        _first.clear()


def freeze_at_first_collection() -> bool:
    """In the master: make each dispatch mule freeze the objects made before it (``gc.freeze()``) at
    its first collection, if that comes before its script does so (see the module docstring).

    :returns: Whether the callback was added: not outside uWSGI, without declarations (read once, as
        the senders read them) or dispatch mules, nor twice.
    """
    if _instance.uwsgi is None:
        return False
    try:
        declarations = _instance.declarations()
    except Exception:  # said where the senders and the mules read them
        return False
    ids = frozenset(number for number, program in enumerate(declarations.programs if declarations else (), 1)
                    if program is None)
    if not ids or _at_first_collection in gc.callbacks:
        return False
    _first[:] = [ids]
    gc.callbacks.append(_at_first_collection)
    return True


def frozen() -> None:
    """Called by the dispatch script once it froze the master's objects: the callback's work is done."""
    _first.clear()


def in_master() -> None:
    """In the master, before the fork: load what a dispatch mule needs at start and to log, and add
    :func:`freeze_at_first_collection` (see the module docstring); nothing outside uWSGI (no fork)."""
    if _instance.uwsgi is None:
        return
    import fcntl  # noqa: F401 - the spool's lock, at each start
    import json  # noqa: F401 - the spool's stop records, at each start
    import logging  # noqa: F401 - a mule that says anything
    import random  # noqa: F401 - uWSGI's post-fork step imports it in every process

    from . import timer

    if not _handler:
        _handler.append(_new_handler())  # added to the root logger by a mule only (install_logging)
    timer.wake_message()
    freeze_at_first_collection()


def _who(mule_id: int | str) -> str:
    return f"mule {mule_id}" if isinstance(mule_id, int) else mule_id


def run_hook(hook: str, mule_id: int | str) -> bool:
    """Import and call ``hook`` (``package.module:function``); log on one line when it fails.

    :param hook: The hook, as declared.
    :param mule_id: This mule's id, for the log (or what runs it: ``RQ worker <pid>``).
    :returns: Whether the hook ran without an exception.
    """
    import importlib

    module_name, _, name = hook.partition(":")
    try:
        target: object = importlib.import_module(module_name)
        for part in name.split("."):
            target = getattr(target, part)
        if not callable(target):
            raise TypeError(f"{hook} is not callable")
        target()
    except Exception as exc:
        _tasks.log().error("uwsgiconf-mules: %s: the mule_init hook %s failed (%s: %s); the %s runs on without it",
                           _who(mule_id), hook, type(exc).__name__, exc,
                           "mule" if isinstance(mule_id, int) else "worker", exc_info=True)
        return False
    return True


def django_needs_setup() -> bool:
    """Whether ``DJANGO_SETTINGS_MODULE`` is set and Django's apps are not loaded yet in this process."""
    if not os.environ.get(DJANGO_SETTINGS):
        return False
    apps = sys.modules.get("django.apps")
    return apps is None or not apps.apps.ready


def setup_django(mule_id: int | str) -> bool:
    """``django.setup()``, logged on one line when it fails.

    :param mule_id: This mule's id, for the log (or what runs it: ``RQ worker <pid>``).
    :returns: Whether it succeeded.
    """
    try:
        import django

        django.setup()
    except Exception as exc:
        _tasks.log().error("uwsgiconf-mules: %s: django.setup() failed (%s: %s) with %s=%s; tasks that use "
                           "Django will not run", _who(mule_id), type(exc).__name__, exc, DJANGO_SETTINGS,
                           os.environ.get(DJANGO_SETTINGS), exc_info=True)
        return False
    return True


def install_logging() -> bool:
    """Send records of level INFO and up to stderr (uWSGI's log) with
    :class:`~uwsgiconf_mules.runtime.logs.MuleFormatter`,
    unless the root logger already has a handler (the app configured logging: it is left alone).

    :returns: Whether the handler was installed.
    """
    import logging

    root = logging.getLogger()
    if root.handlers:
        return False
    handler = _handler[0] if _handler else _new_handler()
    _handler.clear()
    handler.stream = sys.stderr  # as a handler made now would take it
    root.addHandler(handler)
    if root.level == logging.WARNING:  # the default: nobody chose it
        root.setLevel(logging.INFO)
    return True


_handler: list[Any] = []  # the handler install_logging adds, made in the master (in_master): shared


def _new_handler() -> Any:
    import logging

    from ..runtime.logs import MuleFormatter

    handler = logging.StreamHandler()
    handler.setFormatter(MuleFormatter())
    return handler


class LoggingWatch:
    """A finder first in ``sys.meta_path`` until ``logging`` is imported: it lets the usual finders
    find it, and runs :func:`install_logging` right after the module is executed, before the
    importer gets it (so before any record can be emitted); then it leaves ``sys.meta_path``."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        """The spec of ``logging`` as the other finders give it, its loader set to install the
        handler once the module is loaded; None for any other module.

        :param name: The module imported.
        :param path: The parent package's path (None for a top-level module).
        :param target: The module object reloaded, if any.
        """
        if name != "logging":
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        for finder in sys.meta_path:
            found = getattr(finder, "find_spec", None)
            spec = found(name, path, target) if found is not None else None
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        if loader is not None and hasattr(loader, "exec_module"):
            execute = loader.exec_module

            def exec_module(module: Any) -> None:
                execute(module)
                install_logging()

            loader.exec_module = exec_module
        return spec


def check_stops(spool: _spool.Spool) -> None:
    """Say what the last stops of the mules could not keep, and which calls they kept went missing since.

    :param spool: The instance's spool.
    """
    from ..protocol.spool import STOPS

    try:  # most starts find no record: no lock, no listing of the queue (a page of memory per line of Python)
        if not any(name.endswith(STOPS) for name in os.listdir(spool.part("mules"))):
            return
    except OSError:
        pass  # said by check_stops below
    log = _tasks.log  # logging is imported only to say something (see mule.startup)
    for mule_id, kept, found, lost in spool.check_stops():
        if found < kept:
            log().error("uwsgiconf-mules: the spool %s lost calls since the last stop of mule %d: expected %d kept "
                        "call(s), found %d (someone removed them, or replaced the spool)", spool.path, mule_id, kept,
                        found)
        for why, count in lost.items():
            log().error("uwsgiconf-mules: the last stop of mule %d could not keep %d queued call(s): %s", mule_id,
                        count, why)


def start(mule_id: int, declarations: Declarations | None) -> None:
    """Run the start-up steps of a dispatch mule (see the module docstring).

    :param mule_id: This mule's id.
    :param declarations: The instance's declarations, if known.
    """
    hook = declarations.mule_init if declarations is not None else None
    if hook:
        run_hook(hook, mule_id)
    if django_needs_setup():
        setup_django(mule_id)
    if "logging" in sys.modules:
        install_logging()
    else:
        sys.meta_path.insert(0, LoggingWatch())
