"""On a real uWSGI: a request never waits on full queues longer than ``send_timeout`` in total
(the budget of one request), ``nowait`` offloads raise at once on a full queue, and a task's
return value is logged once per task by the mule that discards it."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from support.harness import BURST_APP, Server, declaration

BUDGET = declaration("mules=1, send_timeout=2")


@pytest.mark.parametrize("threads", [[], ["--threads", "2"]], ids=["one thread", "two threads"])
def test_a_burst_to_a_slow_mule_ends_with_delivery_error_within_the_request_budget(
        uwsgi_server: Callable[..., Server], threads: list[str]) -> None:
    # 5,000 calls of 2 ms: each full queue has room again within about 0.4 s (below send_timeout),
    # but the whole burst would hold the request for about 10 s.
    server = uwsgi_server(BUDGET, BURST_APP, workers=1, extra_args=threads)
    status, body = server.get("/burst?5000")
    assert status == 200, body
    assert body.get("error") == "DeliveryError", body
    # Usually the budget ran out over many sends; on a loaded machine the first send to wait may
    # find the mule stalled and use the whole budget alone, which says so in its own words.
    assert any(said in body["message"] for said in (
        "app:quick to mule 1: the queue is full and this request already waited 2 s on full queues",
        "app:quick to mule 1: the queue stayed full for 2 s")), body["message"]
    # A queue holds about 280 of these: more were queued once room came back, unless the first
    # wait used the whole budget (then a queue's worth).
    stalled = "the queue stayed full for 2 s" in body["message"]
    assert (200 if stalled else 300) < body["queued"] < 5000, body
    assert body["waited"] < 2 + 3  # the budget, and the time to encode and send what was queued
    drain(server, "first")  # the mule ran what the first burst queued (slowly, on a loaded machine)
    status, again = server.get("/burst?5000")  # the next request has a budget of its own
    assert again.get("error") == "DeliveryError", again
    assert again["queued"] > 300, again
    drain(server, "second")  # stop with empty queues: nothing to keep in the spool


def drain(server: Server, tag: str) -> None:
    """Wait until the mule ran everything queued so far."""
    def sent() -> bool:  # on a loaded machine the queue may still be full: the marker waits for room again
        status, body = server.get(f"/drain?{tag}", timeout=60)
        assert status == 200 or (isinstance(body, dict) and body.get("error") == "DeliveryError"), body
        return status == 200 and body is True

    server.wait_for(sent, 120, f"the drain marker sent ({tag})")
    server.wait_for(lambda: any(r["tag"] == tag for r in server.lines("drained")), 60, f"the queue drained ({tag})")


THREAD_APP = BURST_APP + '''
import threading


@route("/burst-in-a-thread")
def burst_in_a_thread(query):
    result = {}

    def run():
        result.update(burst(query))

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    return result
'''


def test_a_thread_the_app_started_has_no_request_budget(uwsgi_server: Callable[..., Server]) -> None:
    # Not a request: each of its sends is bounded alone, as before (request_id() there reads the
    # count of core 0, which would give the thread a budget that lasts until the next request).
    server = uwsgi_server(BUDGET, THREAD_APP, workers=1)
    status, body = server.get("/burst-in-a-thread?3000", timeout=60)
    assert status == 200, body
    assert body == {"queued": 3000, "waited": body["waited"]}


def test_nowait_raises_at_once_when_the_queue_is_full(uwsgi_server: Callable[..., Server]) -> None:
    server = uwsgi_server(BUDGET, BURST_APP)
    status, body = server.get("/nowait")
    assert status == 200, body
    assert body.get("error") == "DeliveryError", body
    assert body["message"].startswith("app:quick to mule 1: the queue is full; the message (")
    assert "was not sent (nowait: no wait for room)" in body["message"]
    assert body["queued"] > 100
    assert "MULE MSG QUEUE IS FULL" in server.log()


RESULTS_APP = '''
@mule_offload()
def answer(i):
    record("answer", i=i)
    return i * 2


@mule_offload()
def nothing(i):
    record("nothing", i=i)


@mule_offload()
def keyword(i, *, flag=False):
    record("keyword", i=i)
    return "text"


@route("/results")
def results(query):
    for i in range(3):
        answer(i)
        nothing(i)
        keyword(i, flag=True)
    return True
'''


def test_a_mule_logs_a_discarded_return_value_once_per_task(uwsgi_server: Callable[..., Server]) -> None:
    server = uwsgi_server(declaration("mules=1"), RESULTS_APP)
    assert server.get("/results") == (200, True)
    for name in ("answer", "nothing", "keyword"):
        server.wait_lines(name, 3)
    log = server.log()
    assert log.count("task app:answer returned a int, which is discarded: offloaded calls have no results") == 1
    assert log.count("task app:keyword returned a str, which is discarded") == 1  # the slow path (keywords)
    assert "app:nothing returned" not in log
