"""Helpers shared by the test modules (``tests/harness.py`` is the real-uWSGI harness).

``CASES``: declarations compiled by the tests, by name: the body of a ``uwsgicfg.py``. Each has
expected outputs in ``tests/expected/<name>.ini`` (and ``.yaml``).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from uwsgiconf_mules.declarations import DISPATCH_MULE

EXPECTED = Path(__file__).parent / "expected"
STAMP = re.compile(r"(uwsgiconf v)\S+ on .*")

HEADER = "from uwsgiconf_mules import Section\nsection = Section()\nworkers = section.workers\n"
FOOTER = "uwsgi_configuration = section.as_configuration()\n"

CASES = {
    # The example of the design brief: a farm by count, a farm by ids.
    "design": """
workers.set_mules_params(farms=[workers.mule_farm('fast', 2), workers.mule_farm('slow', [3, 4])])
""",
    # Counts only: farms numbered one after the other from mule 1.
    "counts": """
workers.set_mules_params(farms=[workers.mule_farm('a', 2), workers.mule_farm('b', 3)])
""",
    # Explicit ids, a mule in two farms, an explicit count with a mule in no farm.
    "explicit": """
workers.set_mules_params(mules=5, farms=[
    workers.mule_farm('odd', [1, 3]), workers.mule_farm('even', [2, 4]), workers.mule_farm('all', [1, 2, 3, 4])])
""",
    # Programmed mules next to dispatch mules (None), a farm of dispatch mules.
    "programmed": """
workers.set_mules_params(mules=['feeder.py', 'jobs:consume', None, None],
                         farms=workers.mule_farm('work', [3, 4]))
""",
    # Message buffer, harakiri, reload mercy, touch-reload and send timeout.
    "options": """
workers.set_mules_params(mules=2, harakiri_timeout=30, reload_mercy=10, msg_buffer=1048576,
                         touch_reload=['/tmp/reload-mules'], send_timeout=2.5)
""",
    # Mixed: a count farm, an id farm, more mules than the farms need, set in two calls.
    "mixed": """
workers.set_mules_params(mules=6, farms=[workers.mule_farm('io', 2), workers.mule_farm('cpu', [5, 6])])
workers.set_mules_params(harakiri_timeout=60)
""",
}


def source(name: str) -> str:
    return HEADER + CASES[name] + FOOTER


def normalise(text: str) -> str:
    """Replace the generation stamp and this installation's dispatch mule path with fixed texts."""
    return STAMP.sub(r"\1<version> on <date>", text).replace(DISPATCH_MULE, "<dispatch_mule>")


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *parts: str) -> None:
    """Exit 1, nothing on stdout, one line on stderr that contains every part, no traceback."""
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    for part in parts:
        assert part in proc.stderr


def compile_with(tmp_path: Path, body: str, *command: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "uwsgicfg.py").write_text(body)
    return subprocess.run([*command, "uwsgicfg.py"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL, check=False)
