"""The consumer-group loop against the real broker: at least once, offsets after the work."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence

from aiokafka import ConsumerRecord

from services.bus import KafkaPublisher, Record
from services.consumer import ConsumerLoop
from tests.conftest import Broker


async def _until(predicate: object, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_a_failed_batch_is_read_again_and_committed_work_is_not(broker: Broker) -> None:
    topic = f"consumer.{uuid.uuid4().hex[:8]}"
    group = f"g-{uuid.uuid4().hex[:8]}"
    publisher = KafkaPublisher(broker.bootstrap)
    await publisher.publish([Record(topic, b"k", f"v{i}".encode()) for i in range(5)])
    seen: list[bytes] = []
    failures = 0

    async def handler(records: Sequence[ConsumerRecord[bytes, bytes]]) -> None:
        nonlocal failures
        if failures == 0:
            failures += 1
            raise RuntimeError("database down")  # nothing recorded: the batch must come again
        seen.extend(r.value for r in records)

    stop = asyncio.Event()
    loop = ConsumerLoop(broker.bootstrap, [topic], group, handler, max_backoff_s=0.5, session_timeout_ms=6000)
    task = asyncio.create_task(loop.run(stop))
    await _until(lambda: len(seen) >= 5)
    stop.set()
    await task
    assert failures == 1
    assert seen == [f"v{i}".encode() for i in range(5)]

    # A new member of the same group starts after the committed offsets: nothing again.
    await publisher.publish([Record(topic, b"k", b"v5")])
    later: list[bytes] = []

    async def record(records: Sequence[ConsumerRecord[bytes, bytes]]) -> None:
        later.extend(r.value for r in records)

    stop = asyncio.Event()
    second = ConsumerLoop(broker.bootstrap, [topic], group, record, session_timeout_ms=6000)
    task = asyncio.create_task(second.run(stop))
    await _until(lambda: len(later) >= 1)
    await asyncio.sleep(1.0)  # anything already committed would arrive now too
    stop.set()
    await task
    await publisher.close()
    assert later == [b"v5"]
