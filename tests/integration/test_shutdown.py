"""Stopping a service does not wait on a peer that never answers (issue 10 part 2)."""

from __future__ import annotations

import asyncio

from services.consumer import ConsumerLoop
from tests.e2e.helpers import eventually


async def test_a_consumer_stops_while_its_start_waits_on_the_broker() -> None:
    """What kept `wpc up` from ending: a consumer restarting as the broker went away sat in
    aiokafka's start() (which waits without bound: here, on a broker that accepts the
    connection and never answers), and the service's stop waited for it."""
    connected = asyncio.Event()
    held: list[asyncio.StreamWriter] = []

    async def black_hole(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        connected.set()

    server = await asyncio.start_server(black_hole, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]

    async def handler(records: object) -> None:
        raise AssertionError("no record can come")

    loop = ConsumerLoop(f"127.0.0.1:{port}", ["t"], "g", handler)
    stop = asyncio.Event()
    task = asyncio.create_task(loop.run(stop))
    try:
        await asyncio.wait_for(connected.wait(), 10)
        await asyncio.sleep(0.2)
        assert not task.done()
        stop.set()
        await eventually(task.done, 5, "the consumer loop did not stop")
        assert task.exception() is None and not loop.running
    finally:
        task.cancel()
        for w in held:
            w.close()
        server.close()
        await server.wait_closed()
