"""Type-checked by ``make typecheck`` (mypy strict), never run: offloaded functions keep their
parameter types. Each ``type: ignore`` below must be needed (``warn_unused_ignores``), so the
file fails to check if ``mule_offload`` stops passing the wrapped function's parameters on."""

from __future__ import annotations

from typing import TYPE_CHECKING

from uwsgiconf_mules.runtime import Farm, Mule, mule_offload

if TYPE_CHECKING:
    from uwsgiconf_mules.runtime import OffloadedFunction


@mule_offload("fast")
def resize(image_id: int, *, quality: int = 80) -> str:
    return f"{image_id}@{quality}"


@Farm("fast").offload()
def notify(user: str) -> None:
    pass


@Mule(1).offload()
async def fetch(url: str) -> bytes:
    return url.encode()


def calls() -> None:
    queued: bool = resize(1, quality=5)
    notify("ann")
    fetch("http://localhost/")
    resize("one")  # type: ignore[arg-type]
    resize(1, colour=2)  # type: ignore[call-arg]
    notify()  # type: ignore[call-arg]
    fetch(b"bytes")  # type: ignore[arg-type]
    now: bool = resize.nowait(1, quality=5)
    resize.nowait("one")  # type: ignore[arg-type]
    here: str = resize.__wrapped__(2)
    key: str = resize.key
    typed: OffloadedFunction[[str], None] = notify
    del queued, now, here, key, typed


async def async_calls() -> None:
    sent: bool = await resize.aoffload(1, quality=5)
    await resize.aoffload("one")  # type: ignore[arg-type]
    await notify.aoffload()  # type: ignore[call-arg]
    del sent
