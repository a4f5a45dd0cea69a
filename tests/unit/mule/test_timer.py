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


def _scanning(timer: _timer.Timer) -> threading.Thread:
    thread = threading.Thread(target=timer.scanner, daemon=True)
    thread.start()
    return thread


def test_a_call_renamed_in_without_a_change_of_its_folder_s_mtime_is_found(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from uwsgiconf_mules.protocol.spool import delayed

    monkeypatch.setattr(_timer, "RESCAN", 0.01)
    monkeypatch.setattr(_timer, "FULL_RESCAN", 1.0)
    spool = _spool.Spool(str(tmp_path / "spool"))
    spool.create()
    folder = spool.part("delayed/mule-1")
    delayed.write(spool, "mule:1", b"mx:y\x00", 10)
    timer = _timer.Timer(_Uwsgi(), spool, 1, ["mule:1"])
    thread = _scanning(timer)
    try:
        for young in (True, False):  # the same clock tick as the listing; an old folder, so the full re-list
            mtime = os.stat(folder).st_mtime_ns if young else 10 ** 18
            os.utime(folder, ns=(mtime, mtime))
            time.sleep(0.05)
            with timer.cond:
                timer.mtimes["mule:1"] = mtime
            name = os.path.basename(delayed.write(spool, "mule:1", b"mx:y\x00", 10))
            os.utime(folder, ns=(mtime, mtime))  # the mtime as the scanner last saw it
            deadline = time.monotonic() + (0.5 if young else 2.5)  # young: well before the full re-list
            while name not in timer.known and time.monotonic() < deadline:
                time.sleep(0.01)
            assert name in timer.known, young
    finally:
        timer.stopped = True
        thread.join(5)


def test_a_running_claim_of_a_mule_that_died_after_this_one_started_is_handled_without_a_start(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from uwsgiconf_mules.protocol import envelope
    from uwsgiconf_mules.protocol.spool import delayed

    monkeypatch.setattr(_timer, "RECOVER_EVERY", 0.05)
    monkeypatch.setattr(running, "_header", None)
    spool = _spool.Spool(str(tmp_path / "spool"))
    spool.create()
    timer = _timer.Timer(_Uwsgi(), spool, 1, ["mule:1"])
    thread = threading.Thread(target=timer.run, daemon=True)
    thread.start()
    try:
        payload = envelope.stored(envelope.encoder("shop.tasks:mail")((1,), {}))
        name = os.path.basename(delayed.write(spool, "mule:2", payload, 10 ** 19))
        claimed = delayed.start(delayed.claim(spool, "mule:2", name) or "")
        os.rename(claimed, claimed.replace(f"{os.getpid()}-", f"{2 ** 22 + 12345}-", 1))  # its mule died
        deadline = time.monotonic() + 10
        # The dead letter is written first, then the claim removed: wait for both.
        while (not os.listdir(spool.part("dead")) or os.listdir(spool.part("claimed"))) and time.monotonic() < deadline:
            time.sleep(0.02)
        [letter] = os.listdir(spool.part("dead"))
        assert _spool.read(os.path.join(spool.part("dead"), letter))[0].startswith("interrupted: shop.tasks:mail ")
        assert os.listdir(spool.part("claimed")) == []
    finally:
        timer.stopped = True
        thread.join(5)


def _due_in(spool: _spool.Spool, target: str) -> str:
    import os

    from uwsgiconf_mules.protocol.spool import delayed

    return os.path.basename(delayed.write(spool, target, b"mx:y\x00", time.time_ns()))


def test_a_busy_mule_leaves_due_farm_calls_to_its_idle_mates_but_takes_its_own(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from uwsgiconf_mules.protocol.spool import delayed

    monkeypatch.setattr(_timer, "FARM_GRACE", 0.6)
    header = [7, 0, 0, 0, 0, 0, 0]  # the loop runs a long call
    monkeypatch.setattr(running, "_header", header)
    monkeypatch.setattr(running, "_buffer", bytes(64))
    spool = _spool.Spool(str(tmp_path / "spool"))
    spool.create()
    farm, own = _due_in(spool, "farm:mail"), _due_in(spool, "mule:1")
    timer = _timer.Timer(_Uwsgi(), spool, 1, ["mule:1", "farm:mail"])
    thread = threading.Thread(target=timer.run, daemon=True)
    thread.start()
    try:
        time.sleep(0.3)
        assert delayed.pending(spool, "farm:mail") == [farm]  # left for an idle mate
        assert delayed.pending(spool, "mule:1") == []  # its own: only this mule can run it
        time.sleep(0.6)
        assert delayed.pending(spool, "farm:mail") == []  # overdue past the grace: taken all the same
        assert len(timer.due) == 2
    finally:
        timer.stopped = True
        thread.join(5)
    assert own


def test_run_due_runs_a_bounded_batch_and_wakes_the_loop_for_the_rest(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spool = _spool.Spool(str(tmp_path / "spool"))
    spool.create()
    uwsgi = _Uwsgi()
    timer = _timer.Timer(uwsgi, spool, 1, ["mule:1"])
    ran: list[str] = []
    monkeypatch.setattr(_timer, "_timer", timer)
    monkeypatch.setattr(_timer, "_harakiri", lambda: 0)
    monkeypatch.setattr(_timer, "run_claimed", lambda spool, claimed, harakiri: ran.append(claimed))
    timer.due.extend(f"c{i}" for i in range(_timer.RUN_BATCH + 5))
    _timer.run_due()
    assert len(ran) == _timer.RUN_BATCH and len(timer.due) == 5 and uwsgi.sent == 1
    _timer.run_due()
    assert len(ran) == _timer.RUN_BATCH + 5 and uwsgi.sent == 1
