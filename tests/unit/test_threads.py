"""The package's own threads never take uWSGI's stop, reload and stats signals."""

from __future__ import annotations

import _thread
import ast
import signal
from pathlib import Path

from uwsgiconf_mules import _threads

SRC = Path(__file__).resolve().parents[2] / "src" / "uwsgiconf_mules"


def test_a_thread_of_the_package_blocks_the_process_signals_and_the_caller_keeps_its_mask() -> None:
    before = signal.pthread_sigmask(signal.SIG_BLOCK, set())
    seen: list[set[signal.Signals]] = []
    done = _thread.allocate_lock()
    done.acquire()

    def report() -> None:
        seen.append(set(signal.pthread_sigmask(signal.SIG_BLOCK, set())))
        done.release()

    _threads.start(report)
    assert done.acquire(timeout=10)
    assert {getattr(signal, name) for name in _threads.BLOCKED} <= seen[0]
    assert signal.pthread_sigmask(signal.SIG_BLOCK, set()) == before


def test_every_thread_of_the_package_is_started_through_it() -> None:
    starts = []
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in ("start_new_thread", "Thread"):
                starts.append(f"{path.relative_to(SRC)}:{node.lineno}")
    assert [start.partition(":")[0] for start in starts] == ["_threads.py"], starts
