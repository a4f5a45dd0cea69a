"""Trust on a real uWSGI: only this instance's calls run, send() delivers bytes, no input kills a
mule, and nothing is accepted that cannot run."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from support.harness import Server, compile_config, declaration, launch, start_server
from uwsgiconf_mules.protocol import envelope as _protocol

pytestmark = pytest.mark.integration

# Mule 1 dispatches; mule 2 is a programmed consumer that reads plain messages (as a webhook
# relay would use it) and records each one, as hex, exactly as get_message() returns it.
# A fuzz request sends 2,500 messages, each refused with a log line (and kept as a dead letter):
# a send_timeout of 60 s keeps the request's budget of waits on full queues out of the way.
CONFIG = declaration("mules=[None, 'reader.py'], farms=[section.workers.mule_farm('readers', [2]), "
                     "section.workers.mule_farm('mixed', [1, 2])], send_timeout=60")

READER = '''
import json, os
from uwsgiconf_mules.runtime import Mule

RESULTS = os.environ["TEST_RESULTS"]
while True:
    message = Mule.get_message(farms=True)
    raw = message.encode("utf-8", "surrogateescape")
    with open(os.path.join(RESULTS, "received"), "a") as handle:
        handle.write(json.dumps({"hex": raw.hex(), "mule": Mule.get_current_id()}) + "\\n")
'''

APP = '''
import marshal
import pickle
import random
import uwsgi

from uwsgiconf_mules.protocol import envelope as _protocol
from uwsgiconf_mules.runtime.sending import retry


def exploited(what):
    record("exploited", what=what)


class Exploit:
    def __reduce__(self):
        return exploited, ("unpickled",)


@mule_offload(1)
def victim(tag):
    record("victim", tag=tag)


@mule_offload(2)
def victim_of_reader(tag):
    record("victim", tag=tag)


@mule_offload(1)
async def waits(tag):
    import asyncio
    await asyncio.sleep(0.01)
    record("async", tag=tag)


@mule_offload(1)
def sentinel(tag):
    record("sentinel", tag=tag)


@mule_offload(2)
def sentinel_of_reader(tag):
    record("sentinel", tag=tag)


def forgeries():
    """What a hostile client could make an app relay: old and new envelopes without our token."""
    command = ("touch " + os.path.join(RESULTS, "pwned"),)
    return [
        b"\\xfeUCM\\x01m" + b"os:system\\x00" + marshal.dumps(command),
        b"\\xfeUCM\\x01a" + b"app:victim\\x00" + pickle.dumps((Exploit(),)),
        _protocol.HEADER + b"m" + b"os:system\\x00" + marshal.dumps(command),
        _protocol.HEADER + bytes(16) + b"k" + b"app:victim\\x00" + pickle.dumps(((Exploit(),), {})),
        _protocol.HEADER + bytes(16) + b"m" + b"builtins:exec\\x00" + marshal.dumps(("import os; os.system('id')",)),
        # This version's layout (tag, body, key), with a wrong token.
        (_protocol.HEADER + bytes(16) + b"m" + _protocol.tag(b"os:system") + marshal.dumps(command, 2)
         + b"\\x00os:system"),
    ]


@route("/exploit")
def exploit(query):
    sent = []
    for message in forgeries():
        sent.append(Mule(2).send(message))  # relayed to the consumer through the public API
        sent.append(Mule(1).send(message))  # ... and to a dispatch mule
        sent.append(uwsgi.mule_msg(message, 1))  # raw, as another library would
    return sent


@route("/signed")
def signed(query):
    # Bytes that are one of our own signed envelopes, sent as data: delivered, never run.
    envelope = _protocol.encoder(victim_of_reader.key)(("sent as data",), {})
    return [Mule(2).send(envelope), Farm("readers").send(envelope), envelope.hex()]


def mutate(rng, message):
    message = bytearray(message)
    for _ in range(rng.randint(1, 3)):
        action = rng.random()
        if action < 0.4 and message:
            message[rng.randrange(len(message))] ^= 1 << rng.randrange(8)
        elif action < 0.7:
            del message[rng.randrange(len(message) + 1):]
        else:
            message[rng.randrange(len(message) + 1):0] = rng.randbytes(rng.randint(1, 8))
    return bytes(message)


def fuzz_messages(seed, count):
    rng = random.Random(seed)
    envelopes = [_protocol.encoder(victim.key)((i, "x" * i), {}) for i in range(3)]
    envelopes += [_protocol.encoder(victim.key)((), {"tag": b"kw"}), _protocol.encoder(waits.key)(("f",), {}),
                  _protocol.PROBE + bytes(12), _protocol.data(envelopes[0])] + forgeries()
    for i in range(count):
        kind = i % 6
        if kind == 0:
            yield rng.randbytes(rng.randint(0, 300))
        elif kind == 1:  # bad UTF-8 keys
            yield _protocol.restored(b"a" + rng.randbytes(rng.randint(1, 40)) + b"\\xff:\\x00" + rng.randbytes(5))
        elif kind == 2:  # wrong version or kind
            yield (_protocol.MAGIC + bytes([rng.randrange(256)]) + _protocol.TOKEN + bytes([rng.randrange(256)])
                   + _protocol.tag(b"app:victim") + rng.randbytes(10) + b"\\x00app:victim")
        elif kind == 3:  # oversized keys
            yield _protocol.restored(b"m" + b"k" * rng.randint(1000, 50000) + b"\\x00" + marshal.dumps((1,)))
        else:  # bit flips and truncations of real envelopes and forgeries
            yield mutate(rng, rng.choice(envelopes))


@route("/fuzz")
def fuzz(query):
    seed, count, mule, via = query.split(",")
    mule = int(mule)
    sent = 0
    for message in fuzz_messages(int(seed), int(count)):
        if via == "send":
            Mule(mule).send(message)
        elif not uwsgi.mule_msg(message, mule):
            retry(lambda: uwsgi.mule_msg(message, mule), 30.0, "fuzz", len(message))
        sent += 1
    return sent


@route("/sentinels")
def sentinels(query):
    return [sentinel(query), sentinel_of_reader(query)]


@route("/async")
def run_async(query):
    return [waits(i) for i in range(5)]


@route("/farm-send")
def farm_send(query):
    try:
        Farm("mixed").send("plain")
    except Exception as exc:
        return [type(exc).__name__, isinstance(exc, TypeError), str(exc)]
    return None
'''


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = start_server(tmp_path_factory.mktemp("trust"), CONFIG, APP, modules={"reader": READER})
    yield running
    running.stop()


def received(server: Server) -> list[bytes]:
    return [bytes.fromhex(r["hex"]) for r in server.lines("received")]


def settle(server: Server, tag: str) -> None:
    """Wait until both mules ran a call queued after everything sent so far (queues are FIFO)."""
    assert server.get(f"/sentinels?{tag}") == (200, [True, True])
    server.wait_for(lambda: sum(r["tag"] == tag for r in server.lines("sentinel")) == 2, 60, f"sentinels {tag}")


def test_forged_calls_never_run_and_relayed_bytes_arrive_as_data(server: Server) -> None:
    status, sent = server.get("/exploit")
    assert status == 200 and all(sent) and len(sent) == 18
    settle(server, "exploit")
    assert not (server.results / "pwned").exists()
    assert server.lines("exploited") == [] and server.lines("victim") == []
    # The consumer got each forgery exactly as relayed; dispatch mule 1 refused each, with one line.
    assert len([m for m in received(server) if m.startswith(b"\xfeUCM")]) >= 6
    # Refusals are said once per burst: the first line, then how many more, by reason.
    token, version = "not sent by this uWSGI instance", f"protocol version 1, this runtime reads {_protocol.VERSION}"
    server.wait_for(lambda: refusals(server, 1, token) >= 8 and refusals(server, 1, version) >= 4, 10,
                    "the refusals said")
    assert len([line for line in server.log().splitlines() if "mule 1 refused a" in line]) < 8


def refusals(server: Server, mule: int, reason: str) -> int:
    """How many messages mule ``mule`` said it refused for ``reason``, one by one or in a burst's summary."""
    count = 0
    for line in server.log().splitlines():
        if f"mule {mule} refused a" in line and reason in line:
            count += 1
        elif f"mule {mule}: " in line and "more message(s) refused" in line:
            count += sum(int(part.split(" x ")[0]) for part in line.partition(" s: ")[2].split("; ")
                         if reason in part)
    return count


def test_send_delivers_exactly_its_bytes_even_our_own_envelope_and_never_runs_them(server: Server) -> None:
    status, (to_mule, to_farm, envelope) = server.get("/signed")
    assert status == 200 and to_mule is True and to_farm is True
    server.wait_for(lambda: received(server).count(bytes.fromhex(envelope)) == 2, what="the envelope as data")
    settle(server, "signed")
    assert [r for r in server.lines("victim") if r["tag"] == "sent as data"] == []


def test_no_input_kills_a_mule(server: Server) -> None:
    pids = server.mule_pids()
    total = 0
    for seed, mule, via in ((1, 1, "send"), (2, 1, "raw"), (3, 2, "send"), (4, 2, "raw")):
        status, sent = server.get(f"/fuzz?{seed},2500,{mule},{via}", timeout=120)
        assert status == 200, sent
        total += sent
    assert total == 10_000
    settle(server, "after-fuzz")
    assert server.mule_pids() == pids  # no mule died (a respawn logs a new pid)
    assert not (server.results / "pwned").exists() and server.lines("exploited") == []
    assert server.get("/sentinels?normal") == (200, [True, True])  # and normal offloads still run
    server.wait_for(lambda: sum(r["tag"] == "normal" for r in server.lines("sentinel")) == 2, 30, "offloads")


def test_async_tasks_are_awaited(server: Server) -> None:
    assert server.get("/async") == (200, [True] * 5)
    def mine() -> list[dict[str, object]]:  # the fuzz test also runs this task, with text tags
        return [r for r in server.lines("async") if isinstance(r["tag"], int)]

    runs = server.wait_for(lambda: len(mine()) >= 5 and mine(), what="5 async runs")
    assert sorted(r["tag"] for r in runs) == [0, 1, 2, 3, 4] and {r["mule"] for r in runs} == {1}


def test_plain_messages_to_a_farm_with_a_dispatch_mule_are_refused(server: Server) -> None:
    status, (name, is_type_error, message) = server.get("/farm-send")
    assert status == 200 and (name, is_type_error) == ("UsageError", True)
    assert "farm 'mixed' has dispatch mules (1)" in message


def compiled_app(directory: Path, definitions: str, call: str) -> Path:
    """Compile a one-mule config, and write an app whose every request answers what ``call``
    returns, or the error it raises; returns the compiled config's path."""
    (directory / "uwsgicfg.py").write_text(declaration("mules=1"))
    (directory / "app.py").write_text(
        f"from uwsgiconf_mules.runtime import Mule, mule_offload\n{definitions}"
        "def application(environ, start_response):\n"
        f"    try:\n        body = repr({call})\n"
        "    except Exception as exc:\n        body = type(exc).__name__ + ': ' + str(exc)\n"
        "    start_response('200 OK', [])\n    return [body.encode()]\n")
    path, compiled = compile_config(directory)
    assert compiled.returncode == 0, compiled.stderr
    return path


def test_a_missing_dispatch_script_raises_delivery_error_naming_it(tmp_path: Path) -> None:
    # A config compiled in another environment: its dispatch script path does not exist here.
    path = compiled_app(tmp_path, "@mule_offload()\ndef task():\n    pass\n", "task()")
    from uwsgiconf_mules.declarations import DISPATCH_MULE

    elsewhere = "/nonexistent/venv/uwsgiconf_mules/dispatch_mule.py"
    path.write_text(path.read_text().replace(DISPATCH_MULE, elsewhere))
    server = launch(path, tmp_path, expect_mules=0)
    try:
        status, body = server.get("/")
        assert status == 200
        assert body.startswith(f"DeliveryError: nothing sent to mule 1: the config names the dispatch mule script "
                               f"{elsewhere}, which does not exist here"), body
        assert "compile the config again" in body
    finally:
        server.stop()


def test_without_the_shared_import_workers_refuse_to_send(tmp_path: Path) -> None:
    # A config whose master does not import the runtime (neither shared-import: the dispatch mules'
    # script imports the runtime too): under --lazy-apps each worker imports it, draws a token of its
    # own, and mules would refuse (or take) its calls; the worker says so.
    path = compiled_app(tmp_path, "", "Mule(1).send('x')")
    for shared in ("shared-import = uwsgiconf_mules.runtime\n", "shared-import = uwsgiconf_mules.dispatch_mule\n"):
        assert shared in path.read_text()
        path.write_text(path.read_text().replace(shared, ""))
    server = launch(path, tmp_path, expect_mules=1, extra_args=["--lazy-apps"])
    try:
        status, body = server.get("/")
    finally:
        server.stop()
    assert status == 200
    assert body.startswith("DeclarationsMissingError: uwsgiconf_mules.runtime was not imported in the uWSGI "
                           "master"), body


def test_offloaded_functions_of_a_wsgi_file_script_are_refused_when_decorated(tmp_path: Path) -> None:
    (tmp_path / "uwsgicfg.py").write_text(declaration("mules=1"))
    (tmp_path / "script.py").write_text(
        "from uwsgiconf_mules.runtime import mule_offload\n"
        "try:\n    @mule_offload()\n    def task():\n        pass\n"
        "except Exception as exc:\n    print('REFUSED', type(exc).__name__, exc, flush=True)\n"
        "def application(environ, start_response):\n    start_response('200 OK', [])\n    return [b'ok']\n")
    path, compiled = compile_config(tmp_path)
    assert compiled.returncode == 0, compiled.stderr
    server = launch(path, tmp_path, expect_mules=1, workers=1, app=("--wsgi-file", str(tmp_path / "script.py")))
    try:
        server.wait_for(lambda: "REFUSED" in server.log(), what="the refusal")
    finally:
        server.stop()
    assert "REFUSED MulesRuntimeError cannot offload uwsgi_file_" in server.log()
    assert "cannot be imported by name in a mule" in server.log()


def test_unknown_targets_say_to_recompile(uwsgi_server: Callable[..., Server]) -> None:
    server = uwsgi_server(declaration("mules=1"), '''
@route("/unknown")
def unknown(query):
    try:
        Farm("emails")
    except Exception as exc:
        return str(exc)
''')
    status, message = server.get("/unknown")
    assert status == 200
    assert message.startswith("farm 'emails' is not declared; declared: mule 1; farms: none")
    assert "compile it again and reload uWSGI" in message
