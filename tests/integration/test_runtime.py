"""The runtime on a real uWSGI: Mule, Farm and mule_offload, consistent and lossless.

The tests that only send requests share one server (``server``, module-scoped): each passes its
own run name (``?run=...``), under which the calls it makes record their results, and reads
only the part of the log written during the test where it counts lines. Tests that need another
configuration or app, or that kill or respawn a mule, start their own (``uwsgi_server``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest

from support.harness import Server, declaration, start_server

DESIGN = declaration("farms=[section.workers.mule_farm('fast', 2), section.workers.mule_farm('slow', [3, 4])]")

TASKS_MODULE = '''
import json, os
from uwsgiconf_mules.runtime import Mule, mule_offload

@mule_offload(2)
def process(run, tag):
    with open(os.path.join(os.environ["TEST_RESULTS"], run + ".process"), "a") as handle:
        handle.write(json.dumps({{"module": __name__, "impl": "{impl}", "tag": tag,
                                 "mule": Mule.get_current_id()}}) + "\\n")
'''

APP = '''
from urllib.parse import parse_qsl

import tasks_a
import tasks_b
from uwsgiconf_mules import errors
from uwsgiconf_mules.protocol import envelope as _protocol


def params(query):
    return dict(parse_qsl(query))


def where():
    return {"current": repr(Mule.get_current()), "fast": Farm("fast").is_mine(),
            "slow": Farm("slow").is_mine()}


@mule_offload()
def to_default(run, tag):
    record(f"{run}.default", tag=tag, **where())


@Mule(1).offload()
def to_mule1(run, tag, payload=b""):
    """Runs in mule 1."""
    record(f"{run}.mule1", tag=tag, size=len(payload), **where())


@Farm("fast").offload()
def to_fast(run, tag):
    record(f"{run}.fast", tag=tag, **where())


@mule_offload("slow")
def to_slow(run, tag):
    record(f"{run}.slow", tag=tag, **where())


@mule_offload(3)
def boom(tag):
    raise RuntimeError("boom " + tag)


@mule_offload(3)
def after_boom(run, tag):
    record(f"{run}.after_boom", tag=tag)


@mule_offload(4)
def count(run, i):
    record(f"{run}.burst", i=i)


def error_of(call):
    try:
        call()
    except Exception as exc:
        return [type(exc).__name__, isinstance(exc, ValueError), str(exc)]
    return None


@route("/offload")
def offload_all(query):
    run = params(query)["run"]
    return [to_default(run, "d"), to_mule1(run, "m"), to_fast(run, "f1"), to_fast(run, "f2"), to_fast(run, "f3"),
            to_slow(run, "s1"), to_slow(run, "s2"), tasks_a.process(run, "a"), tasks_b.process(run, "b")]


@route("/info")
def info(query):
    return {
        "farms": [[farm.name, [mule.id for mule in farm.mules]] for farm in Farm.get_farms()],
        "declared": Farm.get_farms() == [Farm("fast", [1, 2]), Farm("slow", [3, 4])],
        "slow_mules": [mule.id for mule in Farm("slow").mules],
        "current": repr(Mule.get_current()), "current_id": Mule.get_current_id(),
        "is_mine": [Farm("fast").is_mine(), Farm("slow").is_mine()],
        "name": to_mule1.__name__, "doc": to_mule1.__doc__,
        "wrapped": to_mule1.__wrapped__.__name__, "key": to_mule1.key,
        "keys": [tasks_a.process.key, tasks_b.process.key],
    }


@route("/bad")
def bad_targets(query):
    return {
        "mule5": error_of(lambda: Mule(5).send("x")),
        "mule99": error_of(lambda: mule_offload(99)),
        "mule1000000": error_of(lambda: Mule(1000000)),
        "mule-1": error_of(lambda: Mule(-1)),
        "farm": error_of(lambda: Farm("nope").send("x")),
        "farm_offload": error_of(lambda: mule_offload("nope")),
        "farm_mules": error_of(lambda: Farm("fast", [1, 3])),
        "get_message": error_of(lambda: Mule.get_message()),
        "farm_get_message": error_of(lambda: Farm.get_message()),
        "pid": os.getpid(),
    }


@route("/oversize")
def oversize(query):
    run = params(query)["run"]
    big = error_of(lambda: to_mule1(run, "big", b"x" * 300000))
    return {"big": big, "fits": to_mule1(run, "fits", b"x" * 150000)}


@route("/unpicklable")
def unpicklable(query):
    return error_of(lambda: to_mule1(params(query)["run"], lambda: None))


@route("/boom")
def boom_route(query):
    return [boom("1"), after_boom(params(query)["run"], "2")]


@route("/burst")
def burst(query):
    run, n = params(query)["run"], int(params(query)["n"])
    for i in range(n):
        count(run, i)
    return "sent"


@route("/unknown")
def unknown(query):
    # Signed envelopes, as this instance's sender makes them, naming no registered task.
    import uwsgi
    return [uwsgi.mule_msg(_protocol.encoder("app:no_such_task")((1,), {}), 1),
            uwsgi.mule_msg(_protocol.encoder("no_such_module:task")((), {}), 1)]


@mule_offload(2)
def without_arguments():
    record("no-arguments")


@route("/no-arguments")
def no_arguments(query):
    return without_arguments()


@mule_offload(1)
def after(run, tag):
    record(f"{run}.after_unknown", tag=tag)


@route("/after")
def after_route(query):
    return after(params(query)["run"], "ok")
'''


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server for the module's request-only tests; each test records under its own run name."""
    server = start_server(tmp_path_factory.mktemp("design"), DESIGN, APP, modules={
        "tasks_a": TASKS_MODULE.format(impl="A"), "tasks_b": TASKS_MODULE.format(impl="B")})
    yield server
    server.stop()


def test_offloads_run_in_the_declared_mules_and_farms(server: Server) -> None:
    status, body = server.get("/offload?run=offloads")
    assert status == 200, body
    assert body == [True] * 9
    default = server.wait_lines("offloads.default", 1)
    assert [(r["mule"], r["current"]) for r in default] == [(1, "Mule(1)")]
    assert [r["mule"] for r in server.wait_lines("offloads.mule1", 1)] == [1]
    fast = server.wait_lines("offloads.fast", 3)
    assert {r["mule"] for r in fast} <= {1, 2}
    assert all(r["fast"] is True and r["slow"] is False for r in fast)
    slow = server.wait_lines("offloads.slow", 2)
    assert {r["mule"] for r in slow} <= {3, 4}
    assert all(r["slow"] is True and r["fast"] is False for r in slow)


def test_same_named_functions_in_two_modules_each_run_their_own_code(server: Server) -> None:
    server.get("/offload?run=same-named")
    runs = sorted((r["module"], r["impl"], r["tag"], r["mule"]) for r in server.wait_lines("same-named.process", 2))
    assert runs == [("tasks_a", "A", "a", 2), ("tasks_b", "B", "b", 2)]


def test_worker_sees_the_declared_farms(server: Server) -> None:
    status, info = server.get("/info")
    assert status == 200, info
    assert info["farms"] == [["fast", [1, 2]], ["slow", [3, 4]]]
    assert info["declared"] is True
    assert info["slow_mules"] == [3, 4]
    assert info["current"] == "None"
    assert info["current_id"] == 0
    assert info["is_mine"] == [False, False]
    assert (info["name"], info["doc"], info["wrapped"]) == ("to_mule1", "Runs in mule 1.", "to_mule1")
    assert info["key"] == "app:to_mule1"
    assert info["keys"] == ["tasks_a:process", "tasks_b:process"]


def test_bad_targets_raise_value_errors_and_the_worker_survives(server: Server) -> None:
    status, errors = server.get("/bad")
    assert status == 200, errors
    for key in ("mule5", "mule99", "mule1000000", "mule-1", "farm", "farm_offload", "farm_mules"):
        name, is_value_error, _ = errors[key]
        assert (name, is_value_error) == ("UnknownTargetError", True), errors[key]
    assert "declared: mules 1..4; farms: 'fast' (mules 1, 2), 'slow' (mules 3, 4)" in errors["mule1000000"][2]
    assert "farm 'nope' is not declared" in errors["farm"][2]
    assert errors["get_message"][:2] == ["NotInMuleError", True]
    assert errors["farm_get_message"][:2] == ["NotInMuleError", True]
    # Nothing crashed: the server still answers and no worker died.
    assert server.get("/ping") == (200, "pong")
    assert "segmentation" not in server.log().lower()
    assert "DAMN ! worker" not in server.log()


def test_oversize_payload_is_refused_at_the_call_site(server: Server) -> None:
    status, body = server.get("/oversize?run=oversize")
    assert status == 200, body
    name, is_value_error, message = body["big"]
    assert (name, is_value_error) == ("PayloadError", True)
    assert "app:to_mule1" in message and "bytes exceeds the" in message and "mule 1" in message
    assert body["fits"] is True
    # 150,000 bytes, past uWSGI's 64 KiB hook buffer, arrive whole.
    assert [r["size"] for r in server.wait_lines("oversize.mule1", 1)] == [150000]


def test_unpicklable_argument_fails_at_the_call(server: Server) -> None:
    body = server.get("/unpicklable?run=unpicklable")[1]
    assert body[0] == "PayloadError" and "cannot be pickled" in body[2]


def test_a_raising_task_is_logged_and_the_mule_goes_on(server: Server) -> None:
    pid_before = server.mule_pids()[3]
    assert server.get("/boom?run=boom")[1] == [True, True]
    after = server.wait_lines("boom.after_boom", 1)
    assert after[0]["mule"] == 3 and after[0]["pid"] == pid_before
    log = server.wait_for(lambda: "RuntimeError: boom 1" in server.log() and server.log())
    assert "task app:boom failed" in log
    assert server.mule_pids()[3] == pid_before


def test_unknown_task_keys_are_logged_and_the_mule_goes_on(server: Server) -> None:
    pid = server.mule_pids()[1]
    assert server.get("/unknown")[1] == [True, True]
    server.wait_for(lambda: "unknown task app:no_such_task" in server.log(), what="unknown task log")
    server.wait_for(lambda: "cannot import module 'no_such_module'" in server.log(), what="import log")
    assert "unknown task no_such_module" not in server.log()  # an import failure is reported as such
    assert server.get("/after?run=unknown")[1] is True
    assert server.wait_lines("unknown.after_unknown", 1)[0]["pid"] == pid


def test_a_call_without_arguments_runs(server: Server) -> None:
    assert server.get("/no-arguments") == (200, True)
    assert [r["mule"] for r in server.wait_lines("no-arguments", 1)] == [2]


def test_a_burst_of_10000_offloads_all_run_in_order(server: Server) -> None:
    start = server.log_size()
    status, body = server.get("/burst?run=burst&n=10000", timeout=60)
    assert (status, body) == (200, "sent")
    runs = server.wait_lines("burst.burst", 10000, timeout=60)
    assert [r["i"] for r in runs] == list(range(10000))
    assert {r["mule"] for r in runs} == {4}
    # The default queue holds a few hundred messages: the burst did fill it, and nothing was lost.
    # uWSGI logs each send that finds it full; the sender waits for room instead of retrying
    # blindly, so that is a few dozen lines here (a fixed backoff logged about 2,500).
    assert 0 < server.log(since=start).count("MULE MSG QUEUE IS FULL") < 1000


PROGRAMMED = declaration("mules=['consumer.py', None], farms=[section.workers.mule_farm('inbox', [1])]")

CONSUMER = '''
import json, os
from uwsgiconf_mules.runtime import Mule

while True:
    message = Mule.get_message(farms=True)
    with open(os.path.join(os.environ["TEST_RESULTS"], "consumer"), "a") as handle:
        handle.write(json.dumps({"message": message, "mule": Mule.get_current_id()}) + "\\n")
'''

PROGRAMMED_APP = '''
@mule_offload(1)
def offloaded_to_programmed(tag):
    record("offloaded", tag=tag)


@route("/send")
def send(query):
    return [Mule(1).send("hello"), Farm("inbox").send("to the farm"), Mule(1).send(b"bytes \\xff"),
            offloaded_to_programmed("runs inside get_message")]
'''


def test_programmed_mule_receives_direct_and_farm_messages(uwsgi_server: Callable[..., Server]) -> None:
    server = uwsgi_server(PROGRAMMED, PROGRAMMED_APP, modules={"consumer": CONSUMER})
    assert server.get("/send") == (200, [True, True, True, True])
    messages = server.wait_lines("consumer", 3)
    assert sorted(r["message"] for r in messages) == ["bytes \udcff", "hello", "to the farm"]
    assert {r["mule"] for r in messages} == {1}
    # An offloaded call reaching a programmed mule runs while it waits in get_message().
    assert server.wait_lines("offloaded", 1)[0]["mule"] == 1


TIMEOUT_READER = '''
import json, os
from uwsgiconf_mules.runtime import Mule

message = Mule.get_message(timeout=1)  # nothing is sent to this mule
with open(os.path.join(os.environ["TEST_RESULTS"], "timeout"), "a") as handle:
    handle.write(json.dumps({"message": message}) + "\\n")
while True:
    Mule.get_message()
'''


def test_get_message_returns_an_empty_string_on_timeout(uwsgi_server: Callable[..., Server]) -> None:
    server = uwsgi_server(declaration("mules=['reader.py']"), modules={"reader": TIMEOUT_READER})
    assert server.wait_lines("timeout", 1) == [{"message": ""}]


CRASH = declaration("mules=1")

CRASH_APP = '''
import time

from uwsgiconf_mules.mule import loop as _dispatch


@mule_offload()
def task(tag):
    if tag == "die":
        time.sleep(0.2)  # let the calls behind it queue up
        os._exit(3)
    record("task", tag=tag, direct=_dispatch.current_queues().direct)


@route("/crash")
def crash(query):
    return [task("before"), task("die")] + [task(f"after{i}") for i in range(200)]


@route("/later")
def later(query):
    return task("later")
'''


def test_mule_killed_mid_task_is_respawned_and_queued_calls_run(
        uwsgi_server: Callable[..., Server]) -> None:
    server = uwsgi_server(CRASH, CRASH_APP)
    first_pid = server.mule_pids()[1]
    assert server.get("/crash")[1] == [True] * 202
    runs = server.wait_lines("task", 201, timeout=30)
    assert [r["tag"] for r in runs] == ["before"] + [f"after{i}" for i in range(200)]
    assert runs[0]["pid"] == first_pid
    assert {r["pid"] for r in runs[1:]} == {server.mule_pids()[1]} != {first_pid}
    # The new mule looked for its queue behind the backlog, found it, and reads it directly.
    assert runs[1]["direct"] == []
    assert server.get("/later")[1] is True
    assert server.wait_lines("task", 202)[-1]["direct"] == [1]
    # The running call is lost, and the log says so.
    assert f"mule 1 (pid {first_pid}) ended without a clean stop (killed or crashed): the call it was " in server.log()


LAZY_APP = '''
@Farm("fast").offload()
def lazy_fast(tag):
    record("lazy", tag=tag, target="fast")


@mule_offload(3)
def lazy_mule(tag):
    record("lazy", tag=tag, target="mule3")


@route("/lazy")
def lazy(query):
    return [lazy_fast("f"), lazy_mule("m")]
'''


def test_lazy_apps_offloads_run(uwsgi_server: Callable[..., Server]) -> None:
    server = uwsgi_server(DESIGN, LAZY_APP, extra_args=["--lazy-apps"])
    assert server.get("/lazy") == (200, [True, True])
    runs = {r["target"]: r["mule"] for r in server.wait_lines("lazy", 2)}
    assert runs["fast"] in {1, 2} and runs["mule3"] == 3


COEXIST_APP = '''
import uwsgidecorators  # imported after the runtime: replaces uwsgi.mule_msg_hook


@mule_offload(1)
def ours(tag):
    record("coexist", tag=tag, by="uwsgiconf-mules")


@uwsgidecorators.mulefunc(2)
def theirs(tag):
    record("coexist", tag=tag, by="uwsgidecorators")


@route("/both")
def both(query):
    ours("a")
    theirs("b")
    return "ok"
'''


def test_uwsgidecorators_imported_after_the_runtime_does_not_break_offloads(
        uwsgi_server: Callable[..., Server]) -> None:
    server = uwsgi_server(DESIGN, COEXIST_APP)
    assert server.get("/both") == (200, "ok")
    runs = sorted((r["by"], r["mule"]) for r in server.wait_lines("coexist", 2))
    assert runs == [("uwsgiconf-mules", 1), ("uwsgidecorators", 2)]


SHARED_APP = '''
import uwsgidecorators


@mule_offload(1)
def ours(tag):
    record("shared", tag=tag, by="uwsgiconf-mules")


@uwsgidecorators.mulefunc  # no mule id: the queue every mule reads
def theirs(tag):
    record("shared", tag=tag, by="uwsgidecorators")


@route("/ours")
def ours_route(query):
    return [ours(f"{query}-{i}") for i in range(3)]


@route("/theirs")
def theirs_route(query):
    theirs(query)
    return "ok"
'''


def test_the_queue_every_mule_reads_is_read_once_the_mule_reads_its_queues_directly(
        uwsgi_server: Callable[..., Server]) -> None:
    # A dispatch mule that found its queues reads them directly, and waits in uWSGI, which also
    # reads the queue every mule reads (uwsgidecorators' @mulefunc without a mule id).
    server = uwsgi_server(declaration("mules=1"), SHARED_APP)
    for round_ in range(3):  # the mule finds its queues on its first messages
        assert server.get(f"/ours?{round_}") == (200, [True, True, True])
        server.wait_lines("shared", 3 * (round_ + 1))
        time.sleep(0.3)
    for tag in ("x", "y"):
        assert server.get(f"/theirs?{tag}") == (200, "ok")
    runs = [r for r in server.wait_lines("shared", 11, timeout=10) if r["by"] == "uwsgidecorators"]
    assert sorted(r["tag"] for r in runs) == ["x", "y"] and {r["mule"] for r in runs} == {1}


HARAKIRI = declaration("mules=1, harakiri_timeout=1")

HARAKIRI_APP = '''
import time

@mule_offload()
def slow(tag):
    record("harakiri", tag=tag, state="started")
    time.sleep(30)
    record("harakiri", tag=tag, state="finished")


@mule_offload()
def quick(tag):
    record("harakiri", tag=tag, state="finished")


@route("/slow")
def slow_route(query):
    return [slow("slow"), quick("quick")]
'''


def test_declared_harakiri_applies_to_offloaded_calls(uwsgi_server: Callable[..., Server]) -> None:
    server = uwsgi_server(HARAKIRI, HARAKIRI_APP)
    first_pid = server.mule_pids()[1]
    assert server.get("/slow")[1] == [True, True]
    runs = server.wait_lines("harakiri", 2, timeout=20)
    assert [(r["tag"], r["state"]) for r in runs] == [("slow", "started"), ("quick", "finished")]
    assert runs[0]["pid"] == first_pid != runs[1]["pid"]  # killed by harakiri, respawned
    assert "HARAKIRI" in server.log().upper()


HARAKIRI_IDLE_APP = '''
@mule_offload()
def quick(tag):
    record("idle", tag=tag)


@route("/quick")
def quick_route(query):
    return quick(query)
'''


def test_harakiri_is_disarmed_when_a_call_returns(uwsgi_server: Callable[..., Server]) -> None:
    server = uwsgi_server(HARAKIRI, HARAKIRI_IDLE_APP)
    assert server.get("/quick?first") == (200, True)
    first = server.wait_lines("idle", 1)[0]
    time.sleep(3)  # idle for longer than the declared harakiri (1 s): a harakiri left armed fires
    assert server.get("/quick?second") == (200, True)
    second = server.wait_lines("idle", 2)[1]
    assert second["pid"] == first["pid"]
    assert "HARAKIRI ON MULE" not in server.log()


SIGNALS = declaration("mules=['waiter.py', None]")

WAITER = '''
from uwsgiconf_mules.runtime import Mule
while True:
    Mule.get_message()  # signals=True: signals to this mule are handled while it waits
'''

SIGNALS_APP = '''
import uwsgi


def on_signal(signum):
    record("signals", signum=signum)


uwsgi.register_signal(17, "mule1", on_signal)
uwsgi.register_signal(18, "mule2", on_signal)


@route("/signal")
def send_signals(query):
    uwsgi.signal(17)
    uwsgi.signal(18)
    return "sent"
'''


def test_signals_are_handled_by_waiting_programmed_and_dispatch_mules(
        uwsgi_server: Callable[..., Server]) -> None:
    server = uwsgi_server(SIGNALS, SIGNALS_APP, modules={"waiter": WAITER})
    assert server.get("/signal") == (200, "sent")
    runs = server.wait_lines("signals", 2)
    assert sorted((r["signum"], r["mule"]) for r in runs) == [(17, 1), (18, 2)]


COEXIST_BEFORE_APP = COEXIST_APP.replace(
    "import uwsgidecorators  # imported after the runtime: replaces uwsgi.mule_msg_hook", "").replace(
    "@uwsgidecorators.mulefunc(2)", "@theirs_decorator(2)")


def test_uwsgidecorators_imported_before_the_runtime_does_not_break_offloads(
        uwsgi_server: Callable[..., Server]) -> None:
    # The prelude imports the runtime, so put uwsgidecorators first in a module imported before it.
    first = "import uwsgidecorators\ntheirs_decorator = uwsgidecorators.mulefunc\n"
    server = uwsgi_server(DESIGN, "from first import theirs_decorator\n" + COEXIST_BEFORE_APP,
                          modules={"first": first}, app_first="import first\n")
    assert server.get("/both") == (200, "ok")
    runs = sorted((r["by"], r["mule"]) for r in server.wait_lines("coexist", 2))
    assert runs == [("uwsgiconf-mules", 1), ("uwsgidecorators", 2)]


STUCK = declaration("mules=1, send_timeout=0.5")

STUCK_APP = '''
import time


@mule_offload()
def block(seconds):
    time.sleep(seconds)


@mule_offload()
def small(i):
    pass


@route("/flood")
def flood(query):
    block(3)
    queued = 0
    started = time.monotonic()
    try:
        for i in range(100000):
            small(i)
            queued += 1
    except Exception as exc:
        return {"queued": queued, "error": type(exc).__name__, "message": str(exc),
                "waited": time.monotonic() - started}
    return {"queued": queued}
'''


def test_a_queue_that_stays_full_raises_delivery_error(uwsgi_server: Callable[..., Server]) -> None:
    server = uwsgi_server(STUCK, STUCK_APP)
    status, body = server.get("/flood")
    assert status == 200, body
    assert body["error"] == "DeliveryError"
    assert "app:small to mule 1: the queue stayed full for 0.5 s" in body["message"]
    assert 100 < body["queued"] < 100000  # the queue took some, then the sender was told
    assert 0.5 <= body["waited"] < 3


PLAIN = """
from uwsgiconf.config import Section
section = Section()
section.workers.set_mules_params(mules=1)
uwsgi_configuration = section.as_configuration()
"""

PLAIN_APP = '''
from uwsgiconf_mules import errors


@route("/missing")
def missing(query):
    def error(call):
        try:
            call()
        except errors.DeclarationsMissingError as exc:
            return str(exc)
    return [error(Farm.get_farms), error(lambda: Mule(1).send("x"))]
'''


def test_without_declarations_the_runtime_says_so(uwsgi_server: Callable[..., Server]) -> None:
    server = uwsgi_server(PLAIN, PLAIN_APP, expect_mules=1)
    status, body = server.get("/missing")
    assert status == 200, body
    assert all(message and "has no uwsgiconf-mules declarations" in message for message in body)
