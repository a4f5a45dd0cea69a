"""Type-checked by ``make typecheck`` (mypy strict), never run: a task with ``result_ttl`` returns
a ``Result`` typed with the task's return type. Each ``type: ignore`` below must be needed."""

from __future__ import annotations

from uwsgiconf_mules.runtime import Farm, Mule, Result, mule_offload


@mule_offload("fast", result_ttl=600)
def resize(image_id: int, *, quality: int = 80) -> str:
    return f"{image_id}@{quality}"


@Farm("fast").offload(result_ttl=60)
def count(user: str) -> int:
    return len(user)


@Mule(1).offload(result_ttl=60.5)
async def fetch(url: str) -> bytes:
    return url.encode()


def calls() -> None:
    handle: Result[str] = resize(1, quality=5)
    text: str = handle.result(timeout=5)
    number: int = count("ann").result()
    status: str = count("ann").status
    resize("one")  # type: ignore[arg-type]
    wrong: Result[int] = resize(1)  # type: ignore[assignment]
    late: Result[str] = resize.nowait(2)
    again: Result[object] = Result.get(handle.id)
    plain: bool = count("ann")  # type: ignore[assignment]
    del handle, text, number, status, wrong, late, again, plain


async def async_calls() -> None:
    handle: Result[str] = await resize.aoffload(1)
    del handle
