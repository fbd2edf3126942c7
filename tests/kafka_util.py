"""Reading topics back in tests (a real consumer against the real broker)."""

from __future__ import annotations

import asyncio
import time

from aiokafka import AIOKafkaConsumer, ConsumerRecord

# The consumer-group session timeout of the tests' consumers (`kafka_session_timeout_s`).
# Tansu holds a member joining a group for half of it: at the services' default (6 s) every
# consumer start and rebalance waits 3 s. At 3 s the wait is 1.5 s, and a member still has
# its heartbeat (every 1 s) twice before a stalled event loop costs it its partitions.
SESSION_TIMEOUT_S = 3.0


async def read_topic(
    bootstrap: str, topic: str, *, expect: int, timeout_s: float = 20.0, settle_s: float = 0.5
) -> list[ConsumerRecord[bytes, bytes]]:
    """Read `topic` from the beginning until `expect` records arrived (then `settle_s` more,
    so that extra records — duplicates — would be seen too) or the timeout passes."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False,
        group_id=None, metadata_max_age_ms=500,
    )
    await consumer.start()
    records: list[ConsumerRecord[bytes, bytes]] = []
    try:
        deadline = time.monotonic() + timeout_s
        settle_until: float | None = None
        while time.monotonic() < deadline:
            if settle_until is None and len(records) >= expect:
                settle_until = time.monotonic() + settle_s
            if settle_until is not None and time.monotonic() >= settle_until:
                break
            batch = await consumer.getmany(timeout_ms=200)
            for msgs in batch.values():
                records.extend(msgs)
            await asyncio.sleep(0)
    finally:
        await consumer.stop()
    records.sort(key=lambda r: (r.partition, r.offset))
    return records
