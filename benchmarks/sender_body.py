"""What the sender's Python side costs per small call, by body of the offloaded function, outside
uWSGI (a C function of two arguments stands in for ``uwsgi.mule_msg``, and says "queued"):

* the function itself with the counters off (``offloaded``: the body inlined, no count);
* the function itself counting inline (``offloaded_counting``: the same body and the count);
* ``nowait`` (through ``attempt()``, the one body ``nowait`` and ``aoffload`` share, and the count).

Best of 25 runs of 200,000 calls, five rounds.

    python benchmarks/sender_body.py
"""

from __future__ import annotations

import operator
import sys
import timeit
import types
from typing import Any

from uwsgiconf_mules.declarations import declare
from uwsgiconf_mules.runtime import instance as _instance, metrics as _metrics, mule_offload

NUMBER = 200_000
REPEAT = 25


def best(statement: str, namespace: dict[str, Any]) -> float:
    """Nanoseconds per run of ``statement``, best of :data:`REPEAT`."""
    return min(timeit.repeat(statement, globals=namespace, number=NUMBER, repeat=REPEAT)) / NUMBER * 1e9


def main() -> None:
    module = types.ModuleType("sender_body_tasks")
    module.__spec__ = None
    sys.modules[module.__name__] = module
    exec("def task(i):\n    pass\n\ndef counted(i):\n    pass\n", module.__dict__)
    module.__spec__ = sys.modules["uwsgiconf_mules"].__spec__  # importable by name, as offloaded functions are
    _instance.local_send = operator.is_not  # a C function of two arguments, truthy: queued
    plain = mule_offload()(module.task)
    declarations, enabled = _instance.declarations, _metrics.enabled
    _instance.declarations = lambda: declare(mules=1)  # type: ignore[assignment]
    _metrics.enabled = lambda: True  # type: ignore[assignment]
    try:
        counted = mule_offload()(module.counted)  # decorated where the counters are known to be on
    finally:
        _instance.declarations, _metrics.enabled = declarations, enabled
    namespace = {"plain": plain, "counted": counted, "nowait": plain.nowait}
    rows: dict[str, list[float]] = {"plain": [], "counted": [], "nowait": []}
    for _ in range(5):
        for name, values in rows.items():
            values.append(best(f"{name}(1)", namespace))
    for name, values in rows.items():
        print(f"{name:8} ns/call: best {min(values):.0f} ({', '.join(f'{v:.0f}' for v in values)})")


if __name__ == "__main__":
    main()
