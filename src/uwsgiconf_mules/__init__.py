"""uwsgiconf-mules: uWSGI mules and mule farms, declared once and used safely.

* ``from uwsgiconf_mules import Section`` -- a drop-in uwsgiconf ``Section`` whose
  ``workers.set_mules_params()`` / ``workers.mule_farm()`` validate and emit mules and farms;
  ``PythonSection``, the same for uwsgiconf's preset ``uwsgiconf.presets.nice.PythonSection``;
  ``MulesMixin`` for any other ``Section`` subclass (``class S(MulesMixin, MySection)``).
* ``from uwsgiconf_mules.runtime import Mule, Farm, mule_offload`` -- the runtime API used
  inside uWSGI; it reads the same declarations the builders wrote.

Worker and mule processes import only ``uwsgiconf_mules.runtime``: this package module imports
the builders (and uwsgiconf's configuration machinery) lazily, on first use of a name.
"""

from __future__ import annotations

from .errors import (
    DeclarationsMissingError as DeclarationsMissingError,
    DeliveryError as DeliveryError,
    MulesConfigurationError as MulesConfigurationError,
    MulesError as MulesError,
    MulesRuntimeError as MulesRuntimeError,
    NotInMuleError as NotInMuleError,
    PayloadError as PayloadError,
    ReturnValueWarning as ReturnValueWarning,
    UnknownTargetError as UnknownTargetError,
    UnknownTaskError as UnknownTaskError,
    UsageError as UsageError,
)

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing is not free for worker processes
if TYPE_CHECKING:
    from .config import MulesMixin as MulesMixin, PythonSection as PythonSection, Section as Section
    from .declarations import MuleFarm as MuleFarm

__all__ = [
    "DeclarationsMissingError",
    "DeliveryError",
    "MuleFarm",
    "MulesConfigurationError",
    "MulesError",
    "MulesMixin",
    "MulesRuntimeError",
    "NotInMuleError",
    "PayloadError",
    "PythonSection",
    "ReturnValueWarning",
    "Section",
    "UnknownTargetError",
    "UnknownTaskError",
    "UsageError",
    "__version__",
]

_LAZY = {"Section": "config", "PythonSection": "config", "MulesMixin": "config",
         "MuleFarm": "declarations"}  # MuleFarm needs neither jinja2 nor uwsgiconf.config


def __getattr__(name: str) -> object:
    if name in _LAZY:
        from importlib import import_module

        value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    if name == "__version__":
        from importlib.metadata import version

        return version("uwsgiconf-mules")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
