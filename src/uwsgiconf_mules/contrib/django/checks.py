"""The Django system checks of :class:`~uwsgiconf_mules.contrib.django.MulesBackend`: its queues
against the declared farms (E001, E002), and the deploy check that says when they cannot be compared
(I001)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ...declarations import CONFIG_ENV
from ...runtime import instance as _instance


def queue_errors(backend: Any) -> Iterable[Any]:
    """The errors of ``backend``'s queues: each must be a declared farm with dispatch mules, or a farm
    routed to an offload backend (nothing when no declarations are known: see :func:`_unchecked`).

    :param backend: The ``MulesBackend``.
    """
    from django.core import checks

    declarations = _instance.declarations()
    if declarations is None:
        return  # said by the deploy check (_unchecked), not on every manage.py command
    for queue in sorted(backend.queues):
        farm = declarations.get_farm(queue)
        if declarations.get_backend(queue) is not None:
            continue  # routed: `uwsgiconf-mules worker` runs its tasks (Django set up there)
        if farm is None:
            yield checks.Error(
                f"task backend {backend.alias!r}: queue {queue!r} is not a farm declared in the uWSGI config; "
                f"declared: {declarations.describe()}",
                hint=f"Declare section.workers.mule_farm({queue!r}, N) or fix QUEUES.",
                obj=backend.alias, id="uwsgiconf_mules.E001")
        elif not set(farm.mules) & set(declarations.dispatchers):
            yield checks.Error(
                f"task backend {backend.alias!r}: farm {queue!r} has only programmed mules "
                f"({', '.join(map(str, farm.mules))}), which do not run tasks",
                hint="Make the farm's mules dispatch mules (None in set_mules_params(mules=[...])).",
                obj=backend.alias, id="uwsgiconf_mules.E002")


def _unchecked(app_configs: Any = None, **kwargs: Any) -> Iterable[Any]:
    """Deploy check (``manage.py check --deploy``): one ``Info`` per :class:`MulesBackend` whose queues
    could not be compared with the farms, because no declarations are known in this process.

    :param app_configs: What Django passes to checks.
    :param kwargs: What Django passes to checks.
    """
    from django.core import checks

    if _instance.declarations() is not None:
        return
    from . import MulesBackend, _api

    for backend in _api.task_backends.all():
        if isinstance(backend, MulesBackend):
            yield checks.Info(
                f"task backend {backend.alias!r}: no uwsgiconf-mules declarations are known in this process, so its "
                f"queues {sorted(backend.queues)} cannot be checked against the farms of the uWSGI config",
                hint=f"Name the uWSGI config module to check them: {CONFIG_ENV}=uwsgicfg.py manage.py check "
                     "(a path, or a module name). Outside uWSGI tasks run at once in the caller.",
                id="uwsgiconf_mules.I001")


def _register_deploy_check() -> None:
    from django.core import checks

    checks.register(_unchecked, "uwsgiconf_mules", deploy=True)


_register_deploy_check()  # when Django loads INSTALLED_APPS (or a setting names the backend)
