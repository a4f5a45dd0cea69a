"""Result ids on a real uWSGI after the master made one: uWSGI forks its workers without running
Python's at-fork handlers (unless ``py-call-osafterfork``), so the pool of random digits the
master read must not be the workers' (see runtime.result_ids)."""

from __future__ import annotations

from pathlib import Path

from support.harness import APP_PRELUDE, compile_config, launch

APP = '''
from uwsgiconf_mules.runtime import result_ids

MASTER_ID = result_ids.new_id(60)  # an id made at import, in the master (pre-fork): a call sent at start-up


@route("/id")
def an_id(query):
    return {"pid": os.getpid(), "random": result_ids.new_id(60)[20:]}
'''


def test_two_workers_forked_after_the_master_made_an_id_draw_different_random_digits(tmp_path: Path) -> None:
    (tmp_path / "uwsgicfg.py").write_text(
        "from uwsgiconf_mules import Section\n"
        "section = Section()\n"
        f"section.workers.set_mules_params(mules=1, spool_dir={str(tmp_path / 'spool')!r})\n"
        "uwsgi_configuration = section.as_configuration()\n")
    (tmp_path / "app.py").write_text(APP_PRELUDE + APP)
    path, compiled = compile_config(tmp_path)
    assert compiled.returncode == 0, compiled.stderr
    server = launch(path, tmp_path, expect_mules=1, workers=2)
    try:
        firsts: dict[int, str] = {}
        for _ in range(200):
            status, body = server.get("/id")
            assert status == 200, body
            firsts.setdefault(body["pid"], body["random"])
            if len(firsts) == 2:
                break
        assert len(firsts) == 2, firsts
        assert len(set(firsts.values())) == 2, firsts  # each worker's own random digits
    finally:
        server.stop()
