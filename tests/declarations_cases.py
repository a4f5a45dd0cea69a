"""Declarations compiled by the tests, by name: the body of a ``uwsgicfg.py``.

Each has expected outputs in ``tests/expected/<name>.ini`` (and ``.yaml``).
"""

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
