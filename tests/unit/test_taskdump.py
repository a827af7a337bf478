"""The task dump walks each task's await chain to where it really waits, groups tasks that wait at the
same place, and is served by the real admin server (``/debug/tasks``)."""

from __future__ import annotations

import asyncio

import aiohttp

from worker.admin import start_admin
from worker.taskdump import await_chain, dump


async def _inner(gate: asyncio.Event) -> None:
    await gate.wait()


async def _outer(gate: asyncio.Event) -> None:
    await _inner(gate)


async def _held(queue: asyncio.Queue[int]) -> None:
    await queue.put(2)  # the queue is full: waits here, as aiormq's reader did


def functions(chain: tuple[str, ...]) -> list[str]:
    return [step.rsplit(" in ", 1)[1] for step in chain if " in " in step]


async def test_the_chain_ends_where_the_task_waits_and_same_places_are_grouped() -> None:
    gate, full = asyncio.Event(), asyncio.Queue[int](maxsize=1)
    full.put_nowait(1)
    outers = [asyncio.create_task(_outer(gate), name=f"outer-{n}") for n in range(7)]
    held = asyncio.create_task(_held(full), name="held")
    await asyncio.sleep(0)  # each task runs up to its first wait
    try:
        chain = await_chain(outers[0])
        assert functions(chain)[:3] == ["_outer", "_inner", "Event.wait"]
        assert chain[-1] == "awaiting Future"
        assert functions(await_chain(held)) == ["_held", "Queue.put"]

        text = dump([*outers, held])
        assert text.startswith("8 tasks waiting at 2 places\n")
        blocks = text.split("\n\n")[1:]
        assert blocks[0].startswith("7 x (outer-0, outer-1, outer-2, outer-3, outer-4, ...)\n")
        assert "in _inner" in blocks[0] and "in Queue.put" not in blocks[0]
        assert blocks[1].startswith("1 x (held)\n") and "in Queue.put" in blocks[1]
    finally:
        gate.set()
        full.get_nowait()
        await asyncio.gather(*outers, held)
    assert dump(outers) == "0 tasks waiting at 0 places\n"  # finished tasks are not listed


async def test_the_admin_server_serves_the_dump() -> None:
    gate = asyncio.Event()
    waiting = asyncio.create_task(_outer(gate), name="waiting-for-the-dump")
    runner = await start_admin({}, "127.0.0.1", 0)
    try:
        url = f"http://127.0.0.1:{runner.addresses[0][1]}/debug/tasks"
        async with aiohttp.ClientSession() as session, session.get(url) as resp:
            assert resp.status == 200
            assert resp.content_type == "text/plain"
            text = await resp.text()
    finally:
        await runner.cleanup()
        gate.set()
        await waiting
    [block] = [b for b in text.split("\n\n") if "waiting-for-the-dump" in b]
    assert "in _outer" in block and "in _inner" in block
