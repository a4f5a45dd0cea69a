"""What is public: the package root, ``runtime``, ``errors``, ``config``, the ``cli`` entry
point, ``logs`` and ``django`` (the Django task backend). ``__all__`` of each lists exactly its
public names; every other module is internal (``_name``), except the dispatch mules' entry script and
the internal layers (``declarations/``, ``protocol/``, ``mule/``: see docs/architecture.md), whose modules are
internal too."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import uwsgiconf_mules

PUBLIC_MODULES = ["uwsgiconf_mules", "uwsgiconf_mules.runtime", "uwsgiconf_mules.errors",
                  "uwsgiconf_mules.config", "uwsgiconf_mules.cli", "uwsgiconf_mules.testing",
                  "uwsgiconf_mules.remote", "uwsgiconf_mules.logs",
                  "uwsgiconf_mules.django"]
INTERNAL_LAYERS = {"declarations", "protocol", "mule", "contrib"}


def test_every_other_module_is_visibly_internal() -> None:
    names = {info.name for info in pkgutil.iter_modules(uwsgiconf_mules.__path__)}
    public = {name.rpartition(".")[2] for name in PUBLIC_MODULES[1:]}
    assert public <= names
    assert {name for name in names - public if not name.startswith("_")} == {"dispatch_mule"} | INTERNAL_LAYERS


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_all_matches_public_names(name: str) -> None:
    module = importlib.import_module(name)
    for exported in module.__all__:
        assert hasattr(module, exported), f"{name}.__all__ names missing {exported}"
    defined_here = {
        attr for attr, value in vars(module).items()
        if not attr.startswith("_") and getattr(value, "__module__", None) == module.__name__
    }
    missing = defined_here - set(module.__all__)
    assert not missing, f"{name}: public but not in __all__: {missing}"


def test_package_exports() -> None:
    assert sorted(uwsgiconf_mules.__all__) == [
        "DeclarationsMissingError", "DeliveryError", "MuleFarm", "MulesConfigurationError", "MulesError",
        "MulesMixin", "MulesRuntimeError", "NotInMuleError", "PayloadError", "PythonSection", "ReturnValueWarning",
        "Section", "UnknownTargetError",
        "UnknownTaskError",
        "UsageError", "__version__",
    ]
    assert uwsgiconf_mules.__version__ == importlib.metadata.version("uwsgiconf-mules")
    from uwsgiconf_mules.config import MulesMixin, PythonSection, Section

    assert uwsgiconf_mules.Section is Section
    assert uwsgiconf_mules.PythonSection is PythonSection
    assert uwsgiconf_mules.MulesMixin is MulesMixin


def test_every_error_has_one_root() -> None:
    from uwsgiconf_mules import errors

    for name in errors.__all__:
        assert issubclass(getattr(errors, name), errors.MulesError)


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_public_callables_have_docstrings(name: str) -> None:
    module = importlib.import_module(name)
    assert module.__doc__
    for exported in module.__all__:
        value = getattr(module, exported)
        if callable(value) and not isinstance(value, type(int | None)):
            assert (value.__doc__ or "").strip(), f"{name}.{exported} has no docstring"
            for attr, member in vars(value).items() if isinstance(value, type) else ():
                if callable(member) and not attr.startswith("_"):
                    assert (member.__doc__ or "").strip(), f"{name}.{exported}.{attr} has no docstring"


def test_the_paths_that_outlive_a_release_still_resolve() -> None:
    """What 0.1.0 wrote where this release reads it: ``shared-import = uwsgiconf_mules.runtime`` in
    compiled configs, ``uwsgiconf_mules.remote.run`` in RQ jobs already in Redis, the Django
    backend's dotted path in settings and the pytest plugin's entry point."""
    import importlib.metadata

    from uwsgiconf_mules import django as django_face, remote, runtime
    from uwsgiconf_mules.protocol import envelope

    assert runtime.__name__ == "uwsgiconf_mules.runtime" and envelope.TOKEN  # drawn by that import
    from rq.utils import import_attribute

    from uwsgiconf_mules.contrib.rq import jobs, sender

    assert import_attribute("uwsgiconf_mules.remote.run") is remote.run  # how RQ finds a job's function
    assert jobs._RUN == sender.RUN == "uwsgiconf_mules.remote.run"  # what the job class lets run
    assert import_attribute(sender.JOB_CLASS) is remote.Job
    from django.utils.module_loading import import_string

    assert import_string("uwsgiconf_mules.django.MulesBackend") is django_face.MulesBackend
    assert (django_face.MulesConfig.name, django_face.MulesConfig.label) == (
        "uwsgiconf_mules.django", "uwsgiconf_mules")
    plugins = {point.name: point.value for point in importlib.metadata.entry_points(group="pytest11")}
    assert plugins["uwsgiconf_mules"] == "uwsgiconf_mules._pytest_plugin"
    importlib.import_module(plugins["uwsgiconf_mules"])
