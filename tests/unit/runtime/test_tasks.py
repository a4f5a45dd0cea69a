"""What a mule does with a message: only this instance's calls of registered functions run."""

from __future__ import annotations

import asyncio
import logging
import marshal
import pickle
import random
import types
from collections.abc import Callable
from pathlib import Path

import pytest

from uwsgiconf_mules import errors
from uwsgiconf_mules.protocol import envelope as protocol
from uwsgiconf_mules.runtime import mule_offload, tasks as _tasks

RAN: list[object] = []
EXPLOITED: list[str] = []


def exploited(what: str) -> None:
    EXPLOITED.append(what)


class Exploit:
    """Runs code while being unpickled."""

    def __reduce__(self) -> tuple[Callable[..., object], tuple[object, ...]]:
        return exploited, ("unpickled",)


@mule_offload()
def task(value: object) -> None:
    RAN.append(value)


@mule_offload()
async def async_task(value: object) -> None:
    await asyncio.sleep(0)
    RAN.append(("async", value))


def never_decorated(value: object) -> None:
    RAN.append(("never decorated", value))


def call(key: str, *args: object, **kwargs: object) -> bytes:
    """An envelope of this instance, as the sender makes it."""
    return protocol.encoder(key)(args, kwargs)


@pytest.fixture(autouse=True)
def _clean() -> None:
    RAN.clear()
    EXPLOITED.clear()


def refusals(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]


def test_a_call_of_this_instance_runs() -> None:
    assert _tasks.receive(call(task.key, 1)) is None
    assert _tasks.receive(call(task.key, value=Exploit())) is None  # our own pickles are trusted
    assert RAN[0] == 1 and EXPLOITED == ["unpickled"]


def test_an_async_task_is_awaited() -> None:
    assert async_task(5) is True  # inline: through the same envelope
    assert _tasks.receive(call(async_task.key, 6)) is None
    assert RAN == [("async", 5), ("async", 6)]


@pytest.mark.parametrize("forged", [
    # The exploit from the field: an old-version envelope naming os:system.
    protocol.MAGIC + b"\x01m" + b"os:system\x00" + marshal.dumps(("touch /tmp/never",)),
    # This version, but no token / a wrong token; pickled bodies that would run code.
    protocol.HEADER + b"k" + f"{__name__}:task\x00".encode() + pickle.dumps(((Exploit(),), {})),
    protocol.HEADER + bytes(16) + b"a" + f"{__name__}:task\x00".encode() + pickle.dumps((Exploit(),)),
    protocol.HEADER + protocol.TOKEN[:8] + bytes(8) + b"a" + f"{__name__}:task\x00".encode() + pickle.dumps((1,)),
    protocol.MAGIC,
], ids=["v1 os:system", "no token", "zero token", "half token", "magic only"])  # ids: the token is random
def test_forged_calls_are_refused_with_one_line_and_never_unpickled(
        forged: bytes, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, "uwsgiconf_mules"):
        assert _tasks.receive(forged) is None
    assert RAN == [] and EXPLOITED == []
    [line] = refusals(caplog)
    assert line.startswith(f"uwsgiconf-mules: mule 0 refused a {len(forged)}-byte message: ")
    assert "\n" not in line


@pytest.mark.parametrize(("key", "reason"), [
    ("os:system", "unknown task os:system: module 'os' registers no function under this key"),
    ("builtins:exec", "unknown task builtins:exec"),
    (f"{__name__}:never_decorated", f"unknown task {__name__}:never_decorated"),
    (f"{__name__}:task.__globals__", f"unknown task {__name__}:task.__globals__"),
    ("no_such_module_anywhere:task", "cannot import module 'no_such_module_anywhere' for task "
                                     "no_such_module_anywhere:task (ModuleNotFoundError"),
    ("nocolon", "task key 'nocolon' is not module:qualname"),
])
def test_signed_calls_run_only_functions_registered_under_their_key(
        key: str, reason: str, caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    with caplog.at_level(logging.ERROR, "uwsgiconf_mules"):
        assert _tasks.receive(call(key, f"touch {tmp_path}/pwned")) is None
    assert RAN == [] and not (tmp_path / "pwned").exists()
    assert reason in refusals(caplog)[0]
    assert not [r for r in caplog.records if "unknown task" in r.getMessage() and "cannot import" in reason]


def test_a_key_that_is_not_utf8_is_refused(caplog: pytest.LogCaptureFixture) -> None:
    message = protocol.restored(b"a\xff\xfe:x\x00")
    with caplog.at_level(logging.ERROR, "uwsgiconf_mules"):
        assert _tasks.receive(message) is None
    assert "task key b'\\xff\\xfe:x' is not UTF-8" in refusals(caplog)[0]


def test_readers_of_plain_messages_get_exactly_what_was_sent() -> None:
    forged = protocol.HEADER + bytes(16) + b"a" + b"x:y\x00"
    # A programmed mule's get_message(): unauthenticated bytes are data, returned untouched.
    for plain in (b"hello", forged, protocol.MAGIC, b""):
        assert _tasks.receive(plain, strict=False) == plain
        assert _tasks.receive(protocol.data(plain), strict=False) == plain
    # Plain data that starts like one of our calls arrives wrapped, and is never run.
    envelope = call(task.key, "not to run")
    assert _tasks.receive(protocol.data(envelope), strict=False) == envelope
    assert _tasks.receive(protocol.data(envelope)) == envelope
    assert RAN == []


def test_no_message_makes_the_receiver_raise() -> None:
    rng = random.Random(20261127)
    seeds = [call(task.key, 1), call(task.key, b"x" * 50, flag=True), call(async_task.key, "a"),
             protocol.PROBE + bytes(12), protocol.data(call(task.key, 2))]
    for _ in range(5000):
        message = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 4)):
            action = rng.random()
            if action < 0.4 and message:
                message[rng.randrange(len(message))] ^= 1 << rng.randrange(8)
            elif action < 0.7:
                del message[rng.randrange(len(message) + 1):]
            else:
                message[rng.randrange(len(message) + 1):0] = rng.randbytes(rng.randint(1, 8))
        logging.disable(logging.CRITICAL)
        try:
            _tasks.receive(bytes(message))
        finally:
            logging.disable(logging.NOTSET)


def _function_in(module_name: str) -> Callable[[], None]:
    def function() -> None:
        pass

    function.__module__, function.__qualname__ = module_name, "function"
    return function


@pytest.mark.parametrize(("func", "reason"), [
    (_function_in("__main__"), "module '__main__' cannot be imported by name in a mule"),
    (_function_in("uwsgi_file__srv_app"), "module 'uwsgi_file__srv_app' cannot be imported by name"),
])
def test_functions_a_mule_cannot_import_by_name_are_refused_when_decorated(
        func: Callable[[], None], reason: str) -> None:
    with pytest.raises(errors.MulesRuntimeError, match=reason):
        mule_offload()(func)


def test_a_module_without_an_import_spec_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    module = types.ModuleType("made_by_exec")  # as uWSGI's --wsgi-file makes them: no __spec__
    monkeypatch.setitem(__import__("sys").modules, "made_by_exec", module)
    with pytest.raises(errors.MulesRuntimeError, match="'made_by_exec' cannot be imported by name"):
        mule_offload()(_function_in("made_by_exec"))


def generator() -> object:
    yield 1


async def async_generator() -> object:
    yield 1


@pytest.mark.parametrize("func", [generator, async_generator])
def test_generator_functions_are_refused(func: Callable[[], object]) -> None:
    with pytest.raises(errors.MulesRuntimeError, match="a generator function would only create a generator"):
        mule_offload()(func)


def test_the_django_import_hint_speaks_of_where_it_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    from django.core.exceptions import AppRegistryNotReady

    from uwsgiconf_mules.runtime import instance as _instance

    outside = _tasks.import_hint(AppRegistryNotReady("Apps aren't loaded yet."))  # an RQ worker, a script
    assert outside.startswith("; Django is not set up in this process: set DJANGO_SETTINGS_MODULE in the uWSGI "
                              "config (env), which uwsgiconf-mules worker passes to the RQ worker")
    assert "this mule" not in outside
    monkeypatch.setattr(_instance, "uwsgi", object())
    assert _tasks.import_hint(AppRegistryNotReady()).startswith("; Django is not set up in this mule")
    assert _tasks.import_hint(ValueError()) == ""


@mule_offload()
def interrupted(value: object, k: int = 0) -> None:
    raise KeyboardInterrupt(f"stop {value}")


def test_a_call_that_raises_keyboardinterrupt_is_reported_then_stops_the_mule(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, "uwsgiconf_mules"), pytest.raises(KeyboardInterrupt, match="stop 3"):
        _tasks.run(protocol.encoder(interrupted.key)((3,), {"k": 1}))  # keywords: the slow path
    assert f"task {interrupted.key} failed in mule 0" in caplog.text
    assert "KeyboardInterrupt: stop 3; arguments (3, k=1)" in caplog.text
