"""The RQ engine: offloaded calls of a routed farm become RQ jobs (see :mod:`._backends`).

Imported only when a farm is routed to RQ (by the runtime, when it resolves such a farm's
route, and by ``uwsgiconf-mules worker``); it imports ``rq`` and ``redis`` then, never before.

Sending. Every job is ``Queue.enqueue_call(RUN, args=(key, *args), kwargs=kwargs)``: RQ runs
:func:`uwsgiconf_mules.remote.run`, which runs the function ``mule_offload`` registered under
``key`` and nothing else (``enqueue`` would take ``job_timeout``, ``description`` and a dozen
other keyword names from the task's own arguments). With the ``json`` serializer (the default)
the arguments are checked before anything is sent: only ``str``, ``int``, ``float``, ``bool``,
``None``, ``list`` and ``dict`` with ``str`` keys reach the worker as they were sent, so
anything else raises :class:`~uwsgiconf_mules.errors.PayloadError` at the call site, naming the
argument. A task's lifecycle (``retries``, ``time_limit``, see :func:`job_options`) is carried by
RQ's own options, and a delayed call is a scheduled job (:func:`delayed_sender`).

Connections. A Redis client is made on a process's first send, never at import nor in the uWSGI
master, and only one per process and server (a process forked with a client makes its own);
it is named ``uwsgiconf-mules:<pid>`` (``CLIENT LIST`` shows who is connected). Connecting
waits at most the URL's ``connect_timeout``, every reply at most the declared ``send_timeout``;
redis-py's own retries are off, so a Redis that is down or silent raises
:class:`~uwsgiconf_mules.errors.DeliveryError` within those bounds, and a send returns True only
once Redis accepted the job.
"""

from __future__ import annotations

import os
from math import isfinite

from ...errors import DeliveryError, MulesConfigurationError, PayloadError
from ...protocol import envelope as _protocol
from ...runtime import tasks as _tasks

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: keep this module as cheap as the runtime
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence
    from typing import Any

    from ...declarations.backends import Backend

__all__ = ["JOB_CLASS", "RUN", "SERIALIZER_PATHS", "check_json", "delayed_sender", "job_fields", "job_options",
           "redis_url", "result_sender", "sender", "worker_command"]

RUN = "uwsgiconf_mules.remote.run"
"""The function every job names: it runs the registered function of the job's task key."""

JOB_CLASS = "uwsgiconf_mules.remote.Job"
"""The job class of the workers: it runs :data:`RUN` and nothing else."""

SERIALIZER_PATHS = {"json": "rq.serializers.JSONSerializer", "pickle": "rq.serializers.DefaultSerializer"}
"""The RQ serializer of each declared ``serializer``: the same on both sides, always."""

_JSON_SCALARS = frozenset((str, int, float, bool, type(None)))
_MAX_DEPTH = 64
_clients: dict[tuple[object, ...], tuple[int, Any]] = {}  # server and timeouts -> (pid, Redis client)


def _argument(func: Callable[..., Any] | None, index: int) -> str:
    code = getattr(func, "__code__", None)
    if code is not None and index < code.co_argcount:
        return repr(code.co_varnames[index])
    return f"{index + 1} (positional)"


def _json_problem(value: Any, depth: int = 0) -> tuple[str, str] | None:
    """(where inside ``value``, what is wrong) when JSON would not give ``value`` back; else None."""
    kind = type(value)
    if kind in _JSON_SCALARS:
        return None if kind is not float or isfinite(value) else ("", f"{value!r}, which JSON does not carry")
    if depth >= _MAX_DEPTH:
        return "", f"nested more than {_MAX_DEPTH} levels deep (or contains itself)"
    items: Iterable[tuple[str, Any]]
    if kind is list:
        items = ((f"[{i}]", item) for i, item in enumerate(value))
    elif kind is dict:
        bad = [name for name in value if type(name) is not str]
        if bad:
            return "", f"a dict with the {type(bad[0]).__name__} key {bad[0]!r} (JSON keys are strings)"
        items = ((f"[{name!r}]", item) for name, item in value.items())
    else:
        return "", "a tuple (JSON would give the worker a list)" if kind is tuple else f"a {kind.__name__}"
    for where, item in items:
        found = _json_problem(item, depth + 1)
        if found:
            return where + found[0], found[1]
    return None


def check_json(key: str, args: Sequence[Any], kwargs: dict[str, Any], label: str) -> None:
    """Refuse arguments that JSON would not give back to the worker as they were sent.

    :param key: The task key, naming the function in the error.
    :param args: Positional arguments.
    :param kwargs: Keyword arguments.
    :param label: The target, for the error.
    :raises PayloadError: naming the argument, where inside it, and its type.
    """
    for name, value in (*enumerate(args), *kwargs.items()):
        found = _json_problem(value) if type(value) not in _JSON_SCALARS or type(value) is float else None
        if found:
            argument = _argument(_tasks.REGISTRY.get(key.encode()), name) if isinstance(name, int) else repr(name)
            raise PayloadError(
                f"{key}: argument {argument}{found[0]} is {found[1]}; calls to {label} travel as JSON, which gives "
                "back only str, int, float, bool, None, list and dict with str keys (pass another type as one of "
                "those, or declare serializer=pickle for this farm)")


def redis_url(backend: Backend, environ: dict[str, str] | None = None) -> str:
    """The Redis URL of ``backend``, credentials read from the environment (for a worker).

    :param backend: The backend.
    :param environ: The environment (default ``os.environ``).
    :raises MulesConfigurationError: when a variable the URL names is not set.
    """
    from urllib.parse import quote

    env = os.environ if environ is None else environ
    if backend.url_env:
        return _env(backend, backend.url_env, env, MulesConfigurationError)
    password = "" if backend.password_env is None else _env(backend, backend.password_env, env,
                                                             MulesConfigurationError)
    auth = f":{quote(password, safe='')}@" if password else ""
    return f"redis://{auth}{backend.host}:{backend.port}/{backend.db}"


def _env(backend: Backend, name: str, environ: Any, error: type[Exception]) -> str:
    value = environ.get(name)
    if not value:
        raise error(f"farm {backend.farm!r} is routed to {backend.where()}, and environment variable {name} "
                    "is not set here")
    return str(value)


def _client(backend: Backend, timeout: float) -> Any:
    """This process's Redis client for ``backend``'s server, made on first use."""
    ident = (backend.url_env or "", backend.host, backend.port, backend.db, backend.password_env,
             backend.connect_timeout, timeout)
    pid = os.getpid()
    found = _clients.get(ident)
    if found is not None and found[0] == pid:
        return found[1]
    from redis import Redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    options: dict[str, Any] = {
        "socket_connect_timeout": backend.connect_timeout, "socket_timeout": timeout,
        "retry": Retry(NoBackoff(), 0), "client_name": f"uwsgiconf-mules:{pid}",
    }
    if backend.url_env:
        client = Redis.from_url(_env(backend, backend.url_env, os.environ, DeliveryError), **options)
    else:
        password = None if backend.password_env is None else _env(backend, backend.password_env, os.environ,
                                                                  DeliveryError)
        client = Redis(host=backend.host or "localhost", port=backend.port, db=backend.db, password=password,
                       **options)
    _clients[ident] = (pid, client)
    return client


def job_options(key: str) -> dict[str, Any]:
    """The options of RQ's ``create_job`` that carry the lifecycle task ``key`` declares (see
    :mod:`uwsgiconf_mules.runtime.policy`): ``retries`` as ``retry=Retry(max=retries,
    interval=[...])``, the intervals drawn here for each job from ``retry_backoff``,
    ``retry_backoff_max`` and ``retry_jitter`` (each job its own jitter); ``time_limit`` as
    ``timeout`` (RQ's ``job_timeout``). Empty for a task that declares none.

    :param key: The task key.
    """
    from ...runtime import policy as _policy

    policy = _policy.POLICIES.get(key)
    if policy is None:
        return {}
    options: dict[str, Any] = {}
    if policy.time_limit is not None:
        options["timeout"] = policy.time_limit
    if policy.retries:
        from rq import Retry

        # RQ's Retry says int, and takes seconds as floats (timedelta(seconds=...)): the declared backoff as it is.
        intervals: list[Any] = [round(policy.delay(attempt), 3) for attempt in range(1, policy.retries + 1)]
        options["retry"] = Retry(max=policy.retries, interval=intervals)
    return options


def _queue(queues: list[tuple[int, Any]], backend: Backend, timeout: float) -> Any:
    """This process's ``rq.Queue`` of ``backend`` (made on the first send of a process, kept in ``queues``)."""
    pid = os.getpid()
    if not queues or queues[0][0] != pid:
        import rq

        queues[:] = [(pid, rq.Queue(backend.queue, connection=_client(backend, timeout),
                                    serializer=SERIALIZER_PATHS[backend.serializer]))]
    return queues[0][1]


def _refused(exc: BaseException, key: str, label: str, backend: Backend, timeout: float) -> DeliveryError:
    return DeliveryError(
        f"{key} to {label}: Redis did not accept the job ({type(exc).__name__}: {exc}); the call was not "
        f"queued (connect timeout {backend.connect_timeout:g} s, send timeout {timeout:g} s)", target=backend.farm)


def sender(backend: Backend, label: str, timeout: float) -> Callable[[bytes, int | bytes], bool]:
    """The send function of offloaded functions routed to ``backend`` (see :mod:`._backends`).

    :param backend: The backend.
    :param label: The target as errors name it.
    :param timeout: The declared send timeout: the longest wait for each reply of Redis.
    """
    import redis.exceptions

    failures = (redis.exceptions.RedisError, OSError)
    strict = backend.serializer == "json"
    queues: list[tuple[int, Any]] = []  # [(pid, Queue)]: one per process

    def send(message: bytes, dest: int | bytes) -> bool:
        raw_key, args, kwargs = _protocol.decode(message)
        key = raw_key.decode()
        if strict:
            check_json(key, args, kwargs, label)
        try:
            _queue(queues, backend, timeout).enqueue_call(RUN, args=(key, *args), kwargs=kwargs, **job_options(key))
        except failures as exc:
            raise _refused(exc, key, label, backend, timeout) from None
        return True

    def send_many(messages: list[bytes]) -> int:
        """Jobs of many calls in one round trip (``Queue.enqueue_many``: one pipeline, a
        transaction): all accepted, or none. Returns how many."""
        import rq

        jobs = []
        for message in messages:
            raw_key, args, kwargs = _protocol.decode(message)
            key = raw_key.decode()
            jobs.append(rq.Queue.prepare_data(RUN, args=(key, *args), kwargs=kwargs, **job_options(key)))
        try:
            queue = _queue(queues, backend, timeout)
            with queue.connection.pipeline() as pipe:
                queue.enqueue_many(jobs, pipeline=pipe)
                pipe.execute()
        except failures as exc:
            raise DeliveryError(
                f"{len(messages)} call(s) to {label}: Redis did not accept the jobs ({type(exc).__name__}: {exc}); "
                f"none was queued (connect timeout {backend.connect_timeout:g} s, send timeout {timeout:g} s)",
                target=backend.farm) from None
        return len(messages)

    send.many = send_many  # type: ignore[attr-defined]  # f.map() and f.starmap() (runtime.batches)
    return send


def delayed_sender(backend: Backend, label: str, timeout: float) -> Callable[[bytes, int], bool]:
    """The send function of delayed calls (``f.later(...)``, ``f.at(...)``) routed to ``backend``:
    each is a job scheduled in RQ's ``ScheduledJobRegistry`` for its due time, as
    ``Queue.enqueue_at`` schedules one (``create_job`` then ``schedule_job``: the task's own
    keyword arguments never reach RQ's options), with the task's :func:`job_options`. RQ moves it
    to the queue when due: its workers must run with the scheduler (``uwsgiconf-mules worker``
    starts them with ``--with-scheduler``).

    :param backend: The backend.
    :param label: The target as errors name it.
    :param timeout: The declared send timeout.
    """
    import datetime

    import redis.exceptions
    from rq.job import JobStatus

    failures = (redis.exceptions.RedisError, OSError)
    strict = backend.serializer == "json"
    queues: list[tuple[int, Any]] = []

    def send_at(message: bytes, due_ns: int) -> bool:
        raw_key, args, kwargs = _protocol.decode(message)
        key = raw_key.decode()
        if strict:
            check_json(key, args, kwargs, label)
        # RQ keeps a scheduled job's time in whole seconds, rounded down: rounded up here, never early.
        when = datetime.datetime.fromtimestamp(-(-due_ns // 1_000_000_000), datetime.timezone.utc)
        try:
            queue = _queue(queues, backend, timeout)
            job = queue.create_job(RUN, args=(key, *args), kwargs=kwargs, status=JobStatus.SCHEDULED,
                                   **job_options(key))
            queue.schedule_job(job, when)
        except failures as exc:
            raise _refused(exc, key, label, backend, timeout) from None
        return True

    return send_at


def result_sender(backend: Backend, label: str, timeout: float) -> Callable[[str, tuple[Any, ...], dict[str, Any], int],
                                                                          str]:
    """The send function of a task with results routed to ``backend``: each call is a job with an id
    drawn here and RQ's ``result_ttl``, so that RQ keeps its status and return value; it returns
    the job's id (see :func:`job_fields`).

    :param backend: The backend.
    :param label: The target as errors name it.
    :param timeout: The declared send timeout.
    """
    import redis.exceptions

    failures = (redis.exceptions.RedisError, OSError)
    strict = backend.serializer == "json"
    queues: list[tuple[int, Any]] = []

    def send(key: str, args: tuple[Any, ...], kwargs: dict[str, Any], ttl: int) -> str:
        if strict:
            check_json(key, args, kwargs, label)
        job_id = os.urandom(16).hex()
        try:
            _queue(queues, backend, timeout).enqueue_call(RUN, args=(key, *args), kwargs=kwargs, job_id=job_id,
                                                          result_ttl=ttl, **job_options(key))
        except failures as exc:
            raise _refused(exc, key, label, backend, timeout) from None
        return job_id

    return send


_RQ_STATUSES = {"queued": "queued", "deferred": "queued", "scheduled": "queued", "started": "running",
                "finished": "succeeded", "failed": "failed", "stopped": "interrupted", "canceled": "interrupted"}


def job_fields(backend: Backend, job_id: str, timeout: float) -> tuple[Any, ...] | None:
    """The fields of a result (as :mod:`uwsgiconf_mules.runtime.results` lays them out, and when
    the call was made) read from RQ's job ``job_id``: its status, times, the exception text of a
    failed job and its return value; None when RQ has no such job (unknown, or its ``result_ttl``
    passed).

    :param backend: The backend the job was sent to.
    :param job_id: The job's id.
    :param timeout: The longest wait for a reply of Redis.
    :raises DeliveryError: when Redis does not answer.
    :raises ResultNotFound: when RQ cannot read the job's hash.
    """
    import pickle

    import redis.exceptions
    from rq.exceptions import NoSuchJobError
    from rq.job import JOB_ID_PATTERN, Job
    from rq.serializers import resolve_serializer

    if not JOB_ID_PATTERN.fullmatch(job_id.partition(":")[0]):  # RQ raises ValueError: an id from a request
        return None
    try:
        job = Job.fetch(job_id, connection=_client(backend, timeout),
                        serializer=resolve_serializer(SERIALIZER_PATHS[backend.serializer]))
        found = job.get_status(refresh=False)
        status = _RQ_STATUSES.get(str(getattr(found, "value", found)), "queued")
        value = pickle.dumps(job.return_value(refresh=False), 5) if status == "succeeded" else None
        latest = job.latest_result() if status == "failed" else None
    except NoSuchJobError:
        return None
    except (redis.exceptions.RedisError, OSError) as exc:
        raise DeliveryError(f"result {backend.farm}/{job_id}: Redis did not answer ({type(exc).__name__}: {exc})",
                            target=backend.farm) from None
    except Exception as exc:  # a hash that RQ cannot read (written by something else than RQ's senders)
        from ...errors import ResultNotFound

        raise ResultNotFound(f"result {backend.farm}/{job_id}: RQ cannot read its job ({type(exc).__name__}: "
                             f"{str(exc)[:200]})", result_id=f"{backend.farm}/{job_id}") from None
    error = None
    if status in ("failed", "interrupted"):
        text = str(getattr(latest, "exc_string", None) or job.exc_info or status).strip()
        last = text.splitlines()[-1] if text else status
        kind, colon, message = last.partition(": ")
        error = (kind if colon else "", message if colon else last, text[-4000:])

    def seconds(when: Any) -> float:
        return float(when.timestamp()) if when is not None else 0.0

    return (1, status, 1 if job.started_at else 0, seconds(job.started_at), seconds(job.ended_at), error, value,
            seconds(job.enqueued_at))


def _check_worker_class(path: str) -> None:
    """Import ``path`` as ``rq worker --worker-class`` would (the current directory first on the
    path) and refuse anything but a subclass of RQ's ``Worker``, before the worker is started."""
    import importlib
    import sys

    from rq.worker import BaseWorker

    problem = None
    module_name, _, name = path.rpartition(".")
    sys.path.insert(0, os.getcwd())
    try:
        found = getattr(importlib.import_module(module_name or path), name)
    except Exception as exc:
        problem = f"cannot be imported ({type(exc).__name__}: {exc})"
    else:
        if not (isinstance(found, type) and issubclass(found, BaseWorker)):
            problem = f"is not an RQ worker class (a subclass of rq.worker.BaseWorker) but {found!r}"
    finally:
        sys.path.remove(os.getcwd())
    if problem:
        raise MulesConfigurationError(f"--worker-class {path!r} {problem}; for instance rq.worker.SimpleWorker",
                                      culprit=path)


def worker_command(backends: Sequence[Backend], burst: bool = False, worker_class: str | None = None,
                   ) -> tuple[list[str], dict[str, str]]:
    """The command that starts one RQ worker for the queues of ``backends``, and the environment
    variables it needs (the Redis URL goes there, not on the command line). It runs ``rq worker``
    through :mod:`uwsgiconf_mules.contrib.rq.worker`, so that a worker that quits on an error exits with
    a non-zero status.

    :param backends: Farms routed to RQ, all on one Redis server with one serializer.
    :param burst: Whether the worker exits once the queues are empty.
    :param worker_class: RQ's ``--worker-class`` (``rq.worker.SimpleWorker``), or None for the
        forking default.
    :raises MulesConfigurationError: when the backends name several servers or serializers (one
        worker reads one server, with one serializer: a job read with another one fails), a
        variable the URL names is not set, or ``worker_class`` is not an RQ worker class.
    """
    import sys

    if not backends:
        raise MulesConfigurationError("no farm is routed to RQ")
    urls = {redis_url(backend) for backend in backends}
    serializers = {backend.serializer for backend in backends}
    if len(urls) > 1 or len(serializers) > 1:
        listed = ", ".join(f"{b.farm!r} ({b.where()}, {b.serializer})" for b in backends)
        raise MulesConfigurationError(
            f"the farms routed to RQ use several Redis servers or serializers ({listed}); a worker reads one "
            "server with one serializer: start one worker per server with --farm")
    command = [sys.executable, "-m", "uwsgiconf_mules.contrib.rq.worker", "worker", "--serializer",
               SERIALIZER_PATHS[serializers.pop()], "--job-class", JOB_CLASS, "--with-scheduler"]
    if burst:
        command.append("--burst")
    if worker_class:
        _check_worker_class(worker_class)
        command += ["--worker-class", worker_class]
    queues = list(dict.fromkeys(backend.queue for backend in backends))
    return [*command, *queues], {"RQ_REDIS_URL": urls.pop()}
