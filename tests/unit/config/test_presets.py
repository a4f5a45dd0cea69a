"""Mules on uwsgiconf's presets and on a user's own ``Section`` subclasses: ``uwsgiconf_mules.PythonSection``
(uwsgiconf's ``presets.nice.PythonSection`` with :class:`~uwsgiconf_mules.MulesMixin` in front),
``bootstrap(...)``, ``configure_uwsgi(get_configurations)``, and ``MulesMixin`` on another preset.

Compiled by uwsgiconf's own ``uwsgiconf compile``; whole outputs against tests/expected/presets."""

from __future__ import annotations

from pathlib import Path

import pytest
from uwsgiconf.cli import base as uwsgiconf_cli

from support.helpers import EXPECTED, invoke_with, normalise

PRESETS = {
    # The preset and its bootstrap, farms declared as on Section; the preset's enable-threads kept once.
    "python_section": """
from uwsgiconf_mules import PythonSection

section = PythonSection.bootstrap('http://127.0.0.1:8000', wsgi_module='app', workers=2)
section.workers.set_mules_params(farms=[section.workers.mule_farm('fast', 2), section.workers.mule_farm('slow', [3])],
                                 spool_dir='/var/spool/app-mules')
uwsgi_configuration = section.as_configuration()
""",
    # The preset's own mules=N: N dispatch mules.
    "python_section_mules": """
from uwsgiconf_mules import PythonSection

section = PythonSection(wsgi_module='app', mules=2, workers=2)
section.workers.set_mules_params(spool_dir='/var/spool/app-mules')
uwsgi_configuration = section.as_configuration()
""",
    # uwsgiconf's runner idiom: configure_uwsgi(get_configurations).
    "configure_uwsgi": """
from uwsgiconf.config import configure_uwsgi
from uwsgiconf_mules import PythonSection


def get_configurations():
    section = PythonSection.bootstrap('http://127.0.0.1:8000', wsgi_module='app', workers=2)
    section.workers.set_mules_params(farms=section.workers.mule_farm('fast', 1), spool_dir='/var/spool/app-mules')
    return section


uwsgi_configuration = configure_uwsgi(get_configurations)
""",
    # A preset of one's own, on uwsgiconf's nice.Section.
    "mixin": """
from uwsgiconf.presets.nice import Section as NiceSection
from uwsgiconf_mules import MulesMixin


class ShopSection(MulesMixin, NiceSection):
    def __init__(self, **kwargs):
        super().__init__(workers=2, **kwargs)
        self.workers.set_mules_params(farms=self.workers.mule_farm('mail', 2), spool_dir='/var/spool/shop')


section = ShopSection(touch_reload='/tmp/shop.reload')
uwsgi_configuration = section.as_configuration()
""",
}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_ini_matches_expected_file(tmp_path: Path, name: str) -> None:
    proc = invoke_with(tmp_path, PRESETS[name], uwsgiconf_cli, "compile")
    assert proc.returncode == 0, proc.stderr
    assert normalise(proc.stdout) == (EXPECTED / "presets" / f"{name}.ini").read_text()


def test_preset_without_mules_renders_as_uwsgiconf_preset(tmp_path: Path) -> None:
    body = ("from {module} import PythonSection\n"
            "uwsgi_configuration = PythonSection.bootstrap('http://127.0.0.1:8000', wsgi_module='app', workers=2)"
            ".as_configuration()\n")
    ours = invoke_with(tmp_path, body.format(module="uwsgiconf_mules"), uwsgiconf_cli, "compile")
    theirs = invoke_with(tmp_path, body.format(module="uwsgiconf.presets.nice"), uwsgiconf_cli, "compile")
    assert ours.returncode == theirs.returncode == 0, ours.stderr + theirs.stderr
    assert normalise(ours.stdout) == normalise(theirs.stdout)
    assert "UWSGICONF_MULES" not in ours.stdout


def test_preset_declaration_is_known_to_the_section() -> None:
    from uwsgiconf_mules import PythonSection

    section = PythonSection.bootstrap("http://127.0.0.1:8000", wsgi_module="app")
    assert section.mules_declarations is None
    section.workers.set_mules_params(farms=section.workers.mule_farm("fast", 2))
    assert section.mules_declarations is not None
    assert section.mules_declarations.describe() == "mules 1..2; farms: 'fast' (mules 1, 2)"


def test_mixin_after_the_section_is_refused_with_the_fix() -> None:
    from uwsgiconf.presets.nice import PythonSection as NicePythonSection

    from uwsgiconf_mules import MulesMixin

    with pytest.raises(TypeError) as caught:
        class Backwards(NicePythonSection, MulesMixin):  # type: ignore[misc]
            pass
    assert str(caught.value) == (
        "Backwards: put MulesMixin first in the bases (class Backwards(MulesMixin, PythonSection)): "
        "Section.workers would hide the mules declarations")
