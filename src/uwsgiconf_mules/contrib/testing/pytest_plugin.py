"""The pytest plugin of uwsgiconf-mules (registered with the ``pytest11`` entry point).

It adds the fixtures ``mules_outbox``, ``mules_eager`` and ``mules_schedules`` (see :mod:`uwsgiconf_mules.testing`) and
the ini option ``uwsgiconf_mules_config``. Nothing else: loading the plugin imports neither the
runtime nor the project's config, and changes nothing until a test uses one of the fixtures.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import ExitStack
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from .modes import Outbox
    from .schedules import ScheduleClock

CONFIG_INI = "uwsgiconf_mules_config"


def pytest_addoption(parser: pytest.Parser) -> None:
    """Declare the ini option naming the project's configuration module.

    :param parser: pytest's parser.
    """
    parser.addini(CONFIG_INI, "uwsgiconf configuration module whose mule and farm declarations the uwsgiconf-mules "
                              "test fixtures check targets against: a path to uwsgicfg.py or a module name, "
                              "optionally :SECTION; a relative path is taken from the ini file's directory (default: "
                              "the UWSGICONF_MULES_CONFIG environment variable)")


def _config(request: pytest.FixtureRequest) -> tuple[str | None, str | None]:
    """(the config, where it was named) from the ini option, a relative path taken from the ini
    file's directory (as pytest's own paths are); (None, None) when the option is not set."""
    value = request.config.getini(CONFIG_INI)
    if not value:
        return None, None
    from ..._project import is_path, split

    conf, section = split(str(value))
    inipath = request.config.inipath
    where = f"{CONFIG_INI} = {value}" + (f" (in {inipath})" if inipath else "")
    if inipath is not None and is_path(conf) and not os.path.isabs(conf):
        conf = os.path.join(os.path.dirname(inipath), conf)
    return (f"{conf}:{section}" if section else conf), where


def _fixture(request: pytest.FixtureRequest, *, run: bool) -> Iterator[Outbox]:
    """A test mode for a fixture: when no declarations are known, the error names the ini option too."""
    from ...errors import DeclarationsMissingError
    from .modes import _mode

    with ExitStack() as stack:
        try:
            outbox = stack.enter_context(_mode(*_config(request), run=run))
        except DeclarationsMissingError as exc:
            raise DeclarationsMissingError(
                f"{exc}; for the pytest fixtures, the ini option {CONFIG_INI} names it: `{CONFIG_INI} = uwsgicfg.py` "
                "in pytest.ini's [pytest] or pyproject.toml's [tool.pytest.ini_options] (a relative path is taken "
                "from the ini file's directory)") from None
        yield outbox


@pytest.fixture
def mules_outbox(request: pytest.FixtureRequest) -> Iterator[Outbox]:
    """Offloaded calls are recorded in the returned ``Outbox``, not run (``uwsgiconf_mules.testing.capture``).

    :param request: pytest's request.
    """
    yield from _fixture(request, run=False)


@pytest.fixture
def mules_eager(request: pytest.FixtureRequest) -> Iterator[Outbox]:
    """Offloaded calls run at once and their exceptions propagate (``uwsgiconf_mules.testing.eager``).

    :param request: pytest's request.
    """
    yield from _fixture(request, run=True)


@pytest.fixture
def mules_schedules(request: pytest.FixtureRequest) -> Iterator[ScheduleClock]:
    """The declared schedules with a fake clock: ``mules_schedules.between(t0, t1)`` lists the
    ticks of ``(t0, t1]``, ``mules_schedules.run(t0, t1)`` runs them (``uwsgiconf_mules.testing.scheduled``);
    the calls the tasks offload are recorded, as with ``mules_outbox``.

    :param request: pytest's request.
    """
    from .schedules import ScheduleClock

    for outbox in _fixture(request, run=False):
        del outbox
        from ...runtime import instance

        declarations = instance.declarations()
        assert declarations is not None  # the test mode found them
        yield ScheduleClock(declarations)
