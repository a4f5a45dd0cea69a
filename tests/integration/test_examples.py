"""The examples, the demo and the benchmark's smoke mode, run for real."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.harness import BIN, UWSGI, Server, compile_config, launch, stop_all

ROOT = Path(__file__).resolve().parents[2]
BASIC = ROOT / "examples" / "basic"
LAZY = ROOT / "examples" / "lazy_yaml"


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    stop_all(started)


def journal(server: Server, path: Path, count: int) -> list[dict[str, object]]:
    server.wait_for(lambda: path.exists() and len(path.read_text().splitlines()) >= count, what="journal")
    return [json.loads(line) for line in path.read_text().splitlines()]


def exercise(server: Server, path: Path) -> None:
    assert server.get("/farms") == (200, {"images": [1, 2]})
    for request in ("/thumbnail?id=1", "/thumbnail?id=2", "/report?name=weekly", "/notify?text=hi"):
        assert server.get(request)[0] == 200
    entries = journal(server, path, 4)
    by_event: dict[object, list[dict[str, object]]] = {}
    for entry in entries:
        by_event.setdefault(entry["event"], []).append(entry)
    assert sorted(e["image_id"] for e in by_event["make_thumbnail"]) == [1, 2]  # type: ignore[type-var]
    assert all(e["mule"] in (1, 2) and e["farms"] == ["images"] for e in by_event["make_thumbnail"])
    assert [(e["name"], e["mule"]) for e in by_event["build_report"]] == [("weekly", 3)]
    assert [(e["message"], e["mule"]) for e in by_event["inbox"]] == [("hi", 4)]


def test_basic_example(tmp_path: Path, servers: list[Server]) -> None:
    config, compiled = compile_config(BASIC, "ini", out_dir=tmp_path)
    assert compiled.returncode == 0, compiled.stderr
    path = tmp_path / "journal.log"
    servers.append(launch(config, BASIC, expect_mules=4, env={"DEMO_JOURNAL": str(path)}, run_dir=tmp_path))
    exercise(servers[0], path)


def test_lazy_apps_yaml_example(tmp_path: Path, servers: list[Server]) -> None:
    # As its README says: compiled in examples/basic, where uWSGI runs it (its programmed mule is there).
    compiled = subprocess.run([str(BIN / "uwsgiconf-mules"), "compile", "--format", "yaml", "--uwsgi", str(UWSGI),
                               str(LAZY / "uwsgicfg.py")], cwd=BASIC, capture_output=True, text=True, timeout=60,
                              stdin=subprocess.DEVNULL, check=False)
    assert compiled.returncode == 0, compiled.stderr
    config = tmp_path / "app.yaml"
    config.write_text(compiled.stdout)
    assert re.search(r'^  lazy-apps: "?true"?$', compiled.stdout, re.M)  # for the parser of this uWSGI
    path = tmp_path / "journal.log"
    server = launch(config, BASIC, fmt="yaml", expect_mules=4, env={"DEMO_JOURNAL": str(path)}, run_dir=tmp_path)
    servers.append(server)
    assert "getting YAML configuration" in server.log()
    exercise(server, path)


def test_yaml_section_is_selected_by_name(tmp_path: Path, servers: list[Server]) -> None:
    (tmp_path / "uwsgicfg.py").write_text(
        "from uwsgiconf.config import Configuration\nfrom uwsgiconf_mules import Section\n"
        "a = Section()\na.workers.set_mules_params(mules=1)\n"
        "b = Section(name='other')\nb.workers.set_mules_params(farms=b.workers.mule_farm('images', [1, 2]), mules=4)\n"
        "uwsgi_configuration = Configuration([a, b])\n")
    config, compiled = compile_config(tmp_path, "yaml")
    assert compiled.returncode == 0, compiled.stderr
    path = tmp_path / "journal.log"
    server = launch(Path(f"{config}:other"), BASIC, fmt="yaml", expect_mules=4,
                    env={"DEMO_JOURNAL": str(path)}, run_dir=tmp_path)
    servers.append(server)
    assert "created farm 1 name: images mules:1,2" in server.log()
    assert server.get("/farms") == (200, {"images": [1, 2]})


def test_make_demo_script_shows_what_ran_where() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "demo.py")], capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "What ran where:" in proc.stdout
    assert "tasks.build_report('weekly')" in proc.stdout and "ran in mule 3" in proc.stdout
    assert "farm images" in proc.stdout and "inbox.py received 'hello from a view'" in proc.stdout
    assert "uWSGI stopped" in proc.stdout


def test_benchmark_smoke_mode_runs(tmp_path: Path) -> None:
    output = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--smoke", "--output", str(output)],
                          capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = [line.split(" = ")[0] for line in proc.stdout.splitlines() if line.strip()][-7:]
    assert summary == ["result/plain", "counters on/raw", "offload/raw", "slowest/raw", "latency p50 busy/raw",
                       "mule pss over bare", "batch/raw"], proc.stdout[-2000:]  # one line per figure, for scripts
    results = json.loads(output.read_text())
    assert set(results) >= {"throughput", "import", "memory", "machine"}
