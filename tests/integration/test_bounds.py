"""On a real uWSGI: a request never waits on full queues longer than ``send_timeout`` in total
(the budget of one request), ``nowait`` offloads raise at once on a full queue, and a task's
return value is logged once per task by the mule that discards it."""

from __future__ import annotations

from collections.abc import Callable

from harness import Server, declaration

BUDGET = declaration("mules=1, send_timeout=2")

BURST_APP = '''
import time


@mule_offload()
def quick(i):
    time.sleep(0.002)


@mule_offload()
def block(seconds):
    time.sleep(seconds)


@route("/burst")
def burst(query):
    queued = 0
    started = time.monotonic()
    try:
        for i in range(int(query)):
            quick(i)
            queued += 1
    except Exception as exc:
        return {"queued": queued, "error": type(exc).__name__, "message": str(exc),
                "waited": time.monotonic() - started}
    return {"queued": queued, "waited": time.monotonic() - started}


@route("/one")
def one(query):
    return quick(-1)


@route("/nowait")
def nowait(query):
    block(2)
    queued = 0
    try:
        for i in range(100000):
            quick.nowait(i)
            queued += 1
    except Exception as exc:
        return {"queued": queued, "error": type(exc).__name__, "message": str(exc)}
    return {"queued": queued}
'''


def test_a_burst_to_a_slow_mule_ends_with_delivery_error_within_the_request_budget(
        uwsgi_server: Callable[..., Server]) -> None:
    # 5,000 calls of 2 ms: each full queue has room again within about 0.4 s (below send_timeout),
    # but the whole burst would hold the request for about 10 s.
    server = uwsgi_server(BUDGET, BURST_APP, workers=1)
    status, body = server.get("/burst?5000")
    assert status == 200, body
    assert body.get("error") == "DeliveryError", body
    assert "app:quick to mule 1: the queue is full and this request already waited 2 s on full queues" in \
        body["message"]
    assert 300 < body["queued"] < 5000
    assert body["waited"] < 2 + 3  # the budget, and the time to encode and send what was queued
    status, again = server.get("/burst?5000")  # the next request has a budget of its own
    assert again.get("error") == "DeliveryError" and "already waited 2 s" in again["message"], again
    assert again["queued"] > 300, again


def test_nowait_raises_at_once_when_the_queue_is_full(uwsgi_server: Callable[..., Server]) -> None:
    server = uwsgi_server(BUDGET, BURST_APP)
    status, body = server.get("/nowait")
    assert status == 200, body
    assert body.get("error") == "DeliveryError", body
    assert body["message"].startswith("app:quick to mule 1: the queue is full; the message (")
    assert "was not sent (nowait: no wait for room)" in body["message"]
    assert 100 < body["queued"] < 100000
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
