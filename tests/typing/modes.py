"""Type-checked by ``make typecheck`` (mypy strict), never run: the test modes and their records."""

from __future__ import annotations

from typing import Any

from uwsgiconf_mules.runtime import Farm, Mule, mule_offload
from uwsgiconf_mules.testing import Offload, Outbox, Sent, capture, eager


@mule_offload("mail")
def welcome(user_id: int) -> None:
    pass


def modes() -> None:
    with capture("uwsgicfg.py") as outbox:
        welcome(1)
    box: Outbox = outbox
    first: Offload = box[0]
    key: str = first.key
    target: Mule | Farm = first.target
    args: tuple[Any, ...] = first.args
    kwargs: dict[str, Any] = first.kwargs
    mine: list[Offload] = box.of(welcome)
    sent: list[Sent] = box.sent
    ran: int = box.run()
    with eager() as again:
        welcome(2)
    count: int = len(again)
    del key, target, args, kwargs, mine, sent, ran, count
