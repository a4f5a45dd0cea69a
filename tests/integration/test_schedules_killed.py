"""Schedules on a real uWSGI whose mule is killed at the worst moment: after it wrote a tick's call
into the spool and before it recorded the tick in the schedule's state (see mule.schedules)."""

from __future__ import annotations

import time
from pathlib import Path

from support.harness import APP_PRELUDE, compile_config, launch

APP = '''
import time


@mule_offload(1)
def tick(label):
    record("tick", label=label, at=time.time())
'''

KILLER = '''
import os, signal

from uwsgiconf_mules.protocol.spool import delayed


def arm():
    """In the mules: the first tick's call written, the mule is killed before it records the tick."""
    write, marker = delayed.write, os.path.join(os.environ["TEST_RESULTS"], "killed")

    def killing(*args, **kwargs):
        path = write(*args, **kwargs)
        if kwargs.get("file_name") and not os.path.exists(marker):
            open(marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        return path

    delayed.write = killing
'''


def test_a_mule_killed_after_a_tick_s_call_and_before_its_state_runs_the_tick_once(tmp_path: Path) -> None:
    (tmp_path / "killer.py").write_text(KILLER)
    (tmp_path / "uwsgicfg.py").write_text(
        "from uwsgiconf_mules import Section\n"
        "section = Section()\n"
        f"section.workers.set_mules_params(mules=1, spool_dir={str(tmp_path / 'spool')!r}, mule_init='killer:arm')\n"
        "section.workers.schedule('app:tick', every=2, mule=1, args=['k'])\n"
        "uwsgi_configuration = section.as_configuration()\n")
    (tmp_path / "app.py").write_text(APP_PRELUDE + APP)
    path, compiled = compile_config(tmp_path)
    assert compiled.returncode == 0, compiled.stderr
    server = launch(path, tmp_path, expect_mules=1, workers=1)
    try:
        server.wait_for((server.results / "killed").exists, 15, "the mule killed at a tick")
        time.sleep(5.5)  # the respawned mule runs what is left, and two or three more ticks
        runs = server.lines("tick")
        buckets = [int(float(run["at"])) // 2 for run in runs]
        assert len(runs) >= 2, server.log()[-3000:]
        assert len(set(buckets)) == len(buckets), (buckets, server.log()[-3000:])  # no tick twice
    finally:
        server.stop()
