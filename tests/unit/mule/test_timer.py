"""The timer of delayed calls (mule.timer): how it wakes its mule's loop."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from uwsgiconf_mules.mule import running, timer as _timer
from uwsgiconf_mules.protocol import spool as _spool


class _Uwsgi:
    def __init__(self) -> None:
        self.sent = 0

    def mule_msg(self, message: bytes, mule_id: int) -> bool:
        self.sent += 1
        return True


def _wake_ups(timer: _timer.Timer, uwsgi: _Uwsgi, seconds: float) -> int:
    before = uwsgi.sent
    time.sleep(seconds)
    return uwsgi.sent - before


def test_a_long_call_gets_no_flood_of_wake_ups_and_a_lost_one_is_sent_again_once_idle(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_timer, "RESCAN", 0.005)
    monkeypatch.setattr(_timer, "WAKE_AGAIN", 0.02)
    header = [7, 0, 0, 0, 0, 0, 0]  # the loop runs a call of 7 bytes
    monkeypatch.setattr(running, "_header", header)
    monkeypatch.setattr(running, "_buffer", bytes(64))
    spool = _spool.Spool(str(tmp_path / "spool"))
    spool.create()
    uwsgi = _Uwsgi()
    timer = _timer.Timer(uwsgi, spool, 1, ["mule:1"])
    timer.due.append(str(tmp_path / "claimed-call"))  # claimed, waiting for the loop
    timer.woken, timer.woke_at = True, time.monotonic()  # the wake-up waits in the queue
    thread = threading.Thread(target=timer.run, daemon=True)
    thread.start()
    try:
        assert _wake_ups(timer, uwsgi, 0.4) == 0  # 20 x WAKE_AGAIN into a long call: the queue is not flooded
        header[0] = 0  # the loop is idle, and the call still not run: the wake-up was lost
        assert _wake_ups(timer, uwsgi, 0.4) >= 1
    finally:
        timer.stopped = True
        thread.join(5)
