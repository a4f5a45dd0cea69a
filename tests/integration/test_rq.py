"""Farms routed to RQ in a real uWSGI: workers and mules enqueue to a real redis-server, with and
without ``--lazy-apps``, and ``uwsgiconf-mules worker --burst`` (RQ's forking worker, and its
SimpleWorker) runs every call exactly once; a Redis stopped mid-run gives ``DeliveryError``."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import rq

from support.harness import BIN, Server
from support.redis_server import RedisServer
from uwsgiconf_mules import remote

CONFIG = """
from uwsgiconf_mules import Section
section = Section()
section.workers.set_mules_params(mules=1, send_timeout={send_timeout})
section.workers.set_offload_backends(reports='rq://127.0.0.1:{port}/0?queue=reports')
uwsgi_configuration = section.as_configuration()
"""

APP = '''
@Farm("reports").offload()
def report(i, origin):
    record("report", i=i, origin=origin)


@mule_offload(1)
def relay(i):
    report(i, "mule")  # offloaded from a mule to RQ


@route("/fill")
def fill(query):
    return sum(report(i, "worker") for i in range(int(query)))


@route("/relay")
def relay_many(query):
    return sum(relay(i) for i in range(int(query)))


@route("/send")
def send(query):
    try:
        return report(int(query), "worker")
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
'''


def run_worker(server: Server, *args: str) -> subprocess.CompletedProcess[str]:
    """``uwsgiconf-mules worker --burst ARGS uwsgicfg.py`` in the app's directory, as a worker host runs it."""
    proc = subprocess.run([str(BIN / "uwsgiconf-mules"), "worker", "--burst", *args, "uwsgicfg.py"],
                          cwd=server.directory, env=dict(os.environ, TEST_RESULTS=str(server.results)),
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def queued(redis: RedisServer) -> int:
    return len(rq.Queue("reports", connection=redis.client()))


def wait_queued(redis: RedisServer, count: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while queued(redis) < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"{queued(redis)} jobs queued, not {count}, after {timeout} s")
        time.sleep(0.05)


def our_client_pids(redis: RedisServer) -> list[int]:
    names = [client["name"] for client in redis.client().client_list()]
    return sorted(int(name.rpartition(":")[2]) for name in names if name.startswith("uwsgiconf-mules:"))


@pytest.mark.parametrize(("lazy", "worker_args"), [(False, ()), (True, ("--worker-class", "rq.worker.SimpleWorker"))],
                         ids=["prefork-forking-worker", "lazy-apps-simple-worker"])
def test_workers_and_mules_enqueue_and_an_rq_worker_runs_each_call_once(
        uwsgi_server: Callable[..., Server], empty_redis: RedisServer, lazy: bool, worker_args: tuple[str, ...],
        ) -> None:
    server = uwsgi_server(CONFIG.format(port=empty_redis.port, send_timeout=5), APP,
                          extra_args=("--lazy-apps",) if lazy else ())
    assert server.get("/fill?20") == (200, 20)
    assert server.get("/fill?20") == (200, 20)
    assert server.get("/relay?10") == (200, 10)
    wait_queued(empty_redis, 50)
    assert server.lines("report") == []  # nothing ran in uWSGI: the farm has no mules

    # No connection from the master (the app is loaded there before the fork, without --lazy-apps);
    # at most one per process that sent.
    pids = our_client_pids(empty_redis)
    assert server.proc.pid not in pids
    assert len(pids) == len(set(pids))
    mule = server.mule_pids()[1]
    assert mule in pids
    workers = [int(pid) for pid in re.findall(r"spawned uWSGI worker \d+ \(pid: (\d+)", server.log())]
    assert set(pids) - {mule} <= set(workers)

    worker = run_worker(server, *worker_args)
    assert "starting rq worker for farm(s) reports" in worker.stderr
    runs = server.lines("report")
    assert sorted((run["origin"], run["i"]) for run in runs) == sorted(
        [("worker", i) for i in range(20)] * 2 + [("mule", i) for i in range(10)])
    assert {run["mule"] for run in runs} == {0}  # run by RQ, outside uWSGI
    assert queued(empty_redis) == 0


def test_redis_stopped_mid_run_is_a_delivery_error_not_a_lost_call(
        uwsgi_server: Callable[..., Server], own_redis: RedisServer) -> None:
    server = uwsgi_server(CONFIG.format(port=own_redis.port, send_timeout=1), APP)
    assert server.get("/send?1") == (200, True)
    run_worker(server, "--worker-class", "rq.worker.SimpleWorker")
    own_redis.stop()
    for i in (2, 3):  # both workers may answer: neither reports a call queued
        status, body = server.get(f"/send?{i}")
        assert status == 200
        assert body.startswith("DeliveryError: app:report to farm 'reports' (RQ queue 'reports' at 127.0.0.1:"), body
        assert "the call was not queued" in body
    own_redis.start()  # same port, empty: the workers' clients connect again
    assert server.get("/send?4") == (200, True)
    assert server.get("/send?5") == (200, True)
    run_worker(server, "--worker-class", "rq.worker.SimpleWorker")
    assert sorted(run["i"] for run in server.lines("report")) == [1, 4, 5]


FORGED_SHOP = '''
import os

from uwsgiconf_mules.runtime import Farm


def _log(line):
    with open(os.path.join(os.environ["TEST_RESULTS"], "ran"), "a") as out:
        out.write(line + "\\n")


@Farm("reports").offload()
def report(n):
    _log(f"report {n}")


def drop_all_tables(*args):  # an ordinary function of the app, not offloaded
    _log("drop_all_tables")
'''


@pytest.mark.parametrize("worker_args", [(), ("--worker-class", "rq.worker.SimpleWorker")],
                         ids=["forking-worker", "simple-worker"])
def test_forged_jobs_run_no_callback_and_reach_no_webhook(tmp_path: Path, empty_redis: RedisServer,
                                                          worker_args: tuple[str, ...]) -> None:
    import http.server
    import threading

    from rq.webhook import Webhook

    (tmp_path / "uwsgicfg.py").write_text(CONFIG.format(port=empty_redis.port, send_timeout=5))
    (tmp_path / "shop.py").write_text(FORGED_SHOP)
    hits: list[str] = []

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            hits.append(self.path)
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.HTTPServer(("127.0.0.1", 0), Hook)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        forged = rq.Queue("reports", connection=empty_redis.client(), serializer="rq.serializers.JSONSerializer")
        url = f"http://127.0.0.1:{httpd.server_port}/internal-admin"
        forged.enqueue_call("uwsgiconf_mules.remote.run", args=("shop:report", 1),
                            on_success=rq.Callback("shop.drop_all_tables"))
        forged.enqueue_call("builtins.exec", args=("x",), on_failure=rq.Callback("shop.drop_all_tables"))
        forged.enqueue_call("uwsgiconf_mules.remote.run", args=("shop:report", 2),
                            webhooks=[Webhook(url, "finished", method="POST"), Webhook(url, "failed", method="POST")])
        forged.enqueue_call("uwsgiconf_mules.remote.run", args=("shop:report", 3))  # a plain job runs
        proc = subprocess.run([str(BIN / "uwsgiconf-mules"), "worker", "--burst", *worker_args, "uwsgicfg.py"],
                              cwd=tmp_path, env=dict(os.environ, TEST_RESULTS=str(tmp_path)), capture_output=True,
                              text=True, timeout=120, stdin=subprocess.DEVNULL, check=False)
        assert proc.returncode == 0, proc.stderr[-4000:]
    finally:
        httpd.shutdown()
        thread.join(10)
        httpd.server_close()
    assert (tmp_path / "ran").read_text() == "report 3\n"  # no callback ran, no forged job ran
    assert hits == []
    assert len(rq.registry.FailedJobRegistry("reports", connection=empty_redis.client())) == 3
    assert proc.stderr.count("UnknownTaskError: job refused") >= 3


LETTERS = """
try:
    from django.tasks import task
except ImportError:
    from django_tasks import task

from .models import Welcome


@task(queue_name="letters")
def welcome_letter(email):
    Welcome.objects.create(email=email, via="using", mule=0)
"""

ENQUEUE_LETTER = """
import django

django.setup()
from shop.letters import welcome_letter

print(welcome_letter.using(queue_name="mail").enqueue("letter@example.com").status)
"""


def test_the_django_example_routed_to_rq_runs_in_uwsgiconf_mules_worker(tmp_path: Path, empty_redis: RedisServer,
                                                                         ) -> None:
    # The example with farm "mail" routed to RQ: its settings module reaches the worker only through the
    # config's env (not this shell), and the worker sets Django up before it imports shop.tasks.
    from support.django_site import env_of, rows, start
    from support.harness import stop_all

    servers: list[Server] = []
    try:
        server, db = start(tmp_path, "lazy-apps", servers, (
            'section.workers.set_mules_params(farms=section.workers.mule_farm("mail", 2))',
            f"section.workers.set_mules_params(mules=2)\nsection.workers.set_offload_backends("
            f"mail='rq://127.0.0.1:{empty_redis.port}/0?queue=mail')"))
        for via in ("decorator", "task", "async"):
            assert server.get(f"/signup?email={via}@example.com&via={via}") == (200, {"queued": True})
    finally:
        stop_all(servers)
    forged = rq.Queue("mail", connection=empty_redis.client(), serializer="rq.serializers.JSONSerializer")
    # A job of the Django backend that names something else than a Django task routed to RQ.
    forged.enqueue_call("uwsgiconf_mules.remote.run",
                        args=("uwsgiconf_mules.django:_run", "shop.models.Welcome", "x", "default", [], {}))
    # Jobs of a real task that claim a queue or a backend the task cannot be used with (.using()).
    refused = {}
    for claim in (("default", "elsewhere"), ("nope", "mail")):
        job = forged.enqueue_call("uwsgiconf_mules.remote.run", args=(
            "uwsgiconf_mules.django:_run", "shop.tasks.welcome_task", "y", claim[0], ["forged@example.com"], {},
            claim[1], None))
        refused[job.id] = claim
    env = env_of(db)
    # A task declared on a queue that is not routed, queued on the routed one with .using(queue_name=...),
    # from a script with the declarations record (as a worker host): the worker runs it.
    site = tmp_path / "site"
    (site / "shop" / "letters.py").write_text(LETTERS)
    with open(site / "mysite" / "settings.py", "a") as settings:
        settings.write('\nTASKS["default"]["QUEUES"] = ["mail", "letters"]\n')
    record = subprocess.run([str(BIN / "uwsgiconf-mules"), "record", str(tmp_path / "app.ini")], capture_output=True,
                            text=True, timeout=60, check=True).stdout.strip()
    sent = subprocess.run([sys.executable, "-c", ENQUEUE_LETTER], cwd=site, capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL, check=False,
                          env=dict(env, UWSGICONF_MULES=record, DJANGO_SETTINGS_MODULE="mysite.settings"))
    assert sent.stdout.strip() == "READY", sent.stderr[-3000:]
    assert len(forged) == 7
    assert "DJANGO_SETTINGS_MODULE" not in env
    proc = subprocess.run([str(BIN / "uwsgiconf-mules"), "worker", "--burst", str(tmp_path / "app.ini")],
                          cwd=tmp_path / "site", env=env, capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert [(email, via) for email, via, _ in rows(db)] == [
        ("async@example.com", "async"), ("decorator@example.com", "decorator"),
        ("letter@example.com", "using"), ("task@example.com", "task")]
    failed = rq.registry.FailedJobRegistry("mail", connection=empty_redis.client())
    assert len(failed) == 3
    for job_id in failed.get_job_ids():
        job = forged.fetch_job(job_id)
        assert job is not None
        exc = job.latest_result().exc_string or ""  # type: ignore[union-attr]
        if job_id in refused:
            backend, queue = refused[job_id]
            assert (f"job refused: Django task shop.tasks.welcome_task: backend {backend!r} and queue {queue!r} do "
                    "not apply to it") in exc, exc
        else:
            assert "job refused: Django task shop.models.Welcome: shop.models.Welcome is not a Django task" in exc


def burst(directory: Path, *worker_args: str) -> subprocess.CompletedProcess[str]:
    """``uwsgiconf-mules worker --burst WORKER_ARGS uwsgicfg.py`` in ``directory`` (jobs write to ``ran`` there)."""
    return subprocess.run([str(BIN / "uwsgiconf-mules"), "worker", "--burst", *worker_args, "uwsgicfg.py"],
                          cwd=directory, env=dict(os.environ, TEST_RESULTS=str(directory)), capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL, check=False)


UNREADABLE = {  # field -> what RQ raises reading it (RQ 3)
    "timeout": (b"abc", "'timeout' (AssertionError)"),
    "status": (b"bogus", "'status' (ValueError: 'bogus' is not a valid JobStatus)"),
    "created_at": (b"yesterday", "'created_at' (ValueError: time data 'yesterday' does not match format"),
    "result_ttl": (b"1x", "'result_ttl' (ValueError: invalid literal for int() with base 10: b'1x')"),
    "dependency_ids": (b"[", "'dependency_ids' (JSONDecodeError: Expecting value"),
}


@pytest.mark.parametrize("worker_args", [(), ("--worker-class", "rq.worker.SimpleWorker")],
                         ids=["forking-worker", "simple-worker"])
def test_a_malformed_job_hash_fails_that_job_and_the_worker_goes_on(tmp_path: Path, empty_redis: RedisServer,
                                                                    worker_args: tuple[str, ...]) -> None:
    # Hashes written straight into Redis, each with one field RQ cannot read, between two plain jobs,
    # and a job id whose key holds a string: RQ's own reading raised outside any job, and the worker
    # exited with status 0 after the first plain job.
    (tmp_path / "uwsgicfg.py").write_text(CONFIG.format(port=empty_redis.port, send_timeout=5))
    (tmp_path / "shop.py").write_text(FORGED_SHOP)
    client = empty_redis.client()
    forged = rq.Queue("reports", connection=client, serializer="rq.serializers.JSONSerializer")
    forged.enqueue_call("uwsgiconf_mules.remote.run", args=("shop:report", 1))
    ids = {}
    for field, (value, _) in UNREADABLE.items():
        job = forged.enqueue_call("uwsgiconf_mules.remote.run", args=("shop:report", field))
        client.hset(job.key, field, value)
        ids[field] = job.id
    client.rpush(forged.key, "not-a-hash")
    client.set("rq:job:not-a-hash", "x")
    forged.enqueue_call("uwsgiconf_mules.remote.run", args=("shop:report", 3))
    proc = burst(tmp_path, *worker_args)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (tmp_path / "ran").read_text() == "report 1\nreport 3\n"  # nothing of the malformed jobs ran
    failed = rq.registry.FailedJobRegistry("reports", connection=client)
    assert sorted(failed.get_job_ids()) == sorted(ids.values())
    for field, job_id in ids.items():
        job = remote.Job.fetch(job_id, connection=client, serializer="rq.serializers.JSONSerializer")
        exc = job.latest_result().exc_string or ""  # type: ignore[union-attr]
        assert f"UnknownTaskError: job refused: RQ cannot read its field(s) {UNREADABLE[field][1]}" in exc, exc
        assert "nothing ran" in exc
    assert "RQ job not-a-hash: its key rq:job:not-a-hash holds no hash, so it is no job; RQ skips it" in proc.stderr
    assert "unhandled exception" not in proc.stdout + proc.stderr


@pytest.mark.parametrize("worker_args", [(), ("--worker-class", "rq.worker.SimpleWorker")],
                         ids=["forking-worker", "simple-worker"])
def test_a_worker_that_quits_on_an_error_exits_with_a_non_zero_status(tmp_path: Path, empty_redis: RedisServer,
                                                                      worker_args: tuple[str, ...]) -> None:
    # A queue key that holds a string: RQ's loop cannot read it, logs "found an unhandled exception,
    # quitting..." and returns, and `rq worker` exits with 0: a supervisor would not restart it.
    (tmp_path / "uwsgicfg.py").write_text(CONFIG.format(port=empty_redis.port, send_timeout=5))
    (tmp_path / "shop.py").write_text(FORGED_SHOP)
    client = empty_redis.client()
    client.set("rq:queue:reports", "x")
    proc = burst(tmp_path, *worker_args)
    assert proc.returncode == 1, proc.stderr[-4000:]
    assert "WRONGTYPE" in proc.stderr
    assert re.search(r"uwsgiconf-mules: the RQ worker quit on an error \(Worker \w+: found an unhandled exception, "
                     r"quitting\.\.\.\): exit status 1$", proc.stderr, re.M), proc.stderr[-4000:]
    client.delete("rq:queue:reports")
    assert burst(tmp_path, *worker_args).returncode == 0  # a normal end is still 0


MANY_APP = '''
@Farm("reports").offload()
def report(i, origin):
    record("report", i=i, origin=origin)


@route("/many")
def many(query):
    told, errors = [], []
    for i in range(int(query)):
        try:
            if report(i, "worker") is True:
                told.append(i)
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
    return {"told": told, "errors": errors}


@route("/token")
def token(query):
    from uwsgiconf_mules.protocol import envelope as _protocol

    return _protocol.TOKEN.hex()


@mule_offload(1)
def breaks(i):
    raise RuntimeError(f"breaks in mule {i}")


@route("/breaks")
def breaks_in_mule(query):
    return breaks(int(query))


@route("/bad")
def bad(query):
    try:
        return report((1, 2), "tuple")
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
'''


def test_redis_killed_mid_burst_every_call_told_true_is_queued(uwsgi_server: Callable[..., Server],
                                                                tmp_path: Path) -> None:
    # A Redis that writes every change to disk before it answers (appendfsync always), SIGKILLed while a
    # worker sends 3000 calls: each call the sender was told True for is in Redis once it is back, and
    # each other call raised DeliveryError.
    import threading

    redis = RedisServer(tmp_path / "redis", durable=True).start()
    try:
        server = uwsgi_server(CONFIG.format(port=redis.port, send_timeout=1), MANY_APP)
        answer: list[tuple[int, object]] = []
        sender = threading.Thread(target=lambda: answer.append(server.get("/many?3000", timeout=120)))
        sender.start()
        wait_queued(redis, 100)
        redis.kill()
        sender.join(150)
        assert not sender.is_alive()
        status, body = answer[0]
        assert status == 200, body
        assert isinstance(body, dict)
        told, errors = body["told"], body["errors"]
        assert 100 <= len(told) < 3000
        assert len(told) + len(errors) == 3000
        assert all(error.startswith("DeliveryError: app:report to farm 'reports'") for error in errors), errors[:3]
        redis.start()  # the same port and directory: its append-only file is read back
        queue = rq.Queue("reports", connection=redis.client(), serializer="rq.serializers.JSONSerializer")
        queued = [job.args[1] for job in queue.get_jobs()]
        # Every call told True is queued; at most the one call Redis took as it was killed was not told.
        assert set(told) <= set(queued), sorted(set(told) - set(queued))[:10]
        assert len(queued) == len(set(queued)) and len(set(queued) - set(told)) <= 1
    finally:
        redis.stop()


def test_no_token_and_no_redis_password_in_any_output(uwsgi_server: Callable[..., Server], tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    # The instance's token and the Redis password appear in no log of uWSGI, in no output of the worker,
    # in no answer, in nothing kept in Redis and on no command line, also when sends fail.
    import glob

    password = "pw-" + os.urandom(8).hex()
    redis = RedisServer(tmp_path / "redis", password=password).start()
    monkeypatch.setenv("TEST_REDIS_PASSWORD", password)
    try:
        config = CONFIG.format(port=redis.port, send_timeout=1).replace(
            "?queue=reports", "?queue=reports&password_env=TEST_REDIS_PASSWORD")
        server = uwsgi_server(config, MANY_APP.replace('record("report"', 'assert i != 1, "fails in the worker"\n'
                                                                           '    record("report"'))
        status, token = server.get("/token")
        assert status == 200 and len(token) == 32
        answers = [server.get("/many?3"), server.get("/bad"), server.get("/breaks?1")]
        assert answers[0] == (200, {"told": [0, 1, 2], "errors": []})
        assert str(answers[1][1]).startswith("PayloadError: app:report: argument 'i' is a tuple")
        server.wait_for(lambda: "RuntimeError: breaks in mule 1" in server.log(), what="the mule's failure")
        cmdlines = [Path(path).read_bytes() for path in glob.glob("/proc/[0-9]*/cmdline")
                    if _readable(path)]
        worker = run_worker(server)  # runs 0 and 2; 1 fails in the worker, with its traceback
        assert "fails in the worker" in worker.stdout + worker.stderr
        kept = b"".join(_dump(redis))
        redis.stop()
        answers.append(server.get("/many?1"))  # Redis is down: DeliveryError
        assert "DeliveryError" in str(answers[-1][1])
        outputs = {"uwsgi log": server.log().encode(), "worker": (worker.stdout + worker.stderr).encode(),
                   "answers": repr(answers).encode(), "redis": kept, "command lines": b"\n".join(cmdlines)}
        secrets = {"token": [token.encode(), bytes.fromhex(token), repr(bytes.fromhex(token)).encode()],
                   "password": [password.encode()]}
        for where, text in outputs.items():
            for name, forms in secrets.items():
                assert not any(form in text for form in forms), f"the {name} is in the {where}"
    finally:
        redis.stop()


def _readable(path: str) -> bool:
    try:
        Path(path).read_bytes()
    except OSError:
        return False
    return True


def _dump(redis: RedisServer) -> list[bytes]:
    """Every key of ``redis`` and its value (DUMP: the serialised value, whatever its type)."""
    client = redis.client()
    return [key + b"=" + (client.dump(key) or b"") for key in client.keys("*")]
