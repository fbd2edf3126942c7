"""The consumer-group loop against the real broker: at least once, offsets after the work."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Sequence

import pytest
from aiokafka import ConsumerRecord
from prometheus_client import REGISTRY

from services.bus import KafkaPublisher, Record
from services.consumer import ConsumerLoop
from services.health import Verdict
from tests.conftest import Broker
from tests.e2e.helpers import eventually
from tests.kafka_util import SESSION_TIMEOUT_S

SESSION_MS = int(SESSION_TIMEOUT_S * 1000)


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
    loop = ConsumerLoop(broker.bootstrap, [topic], group, handler, max_backoff_s=0.5, session_timeout_ms=SESSION_MS)
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
    second = ConsumerLoop(broker.bootstrap, [topic], group, record, session_timeout_ms=SESSION_MS)
    task = asyncio.create_task(second.run(stop))
    await _until(lambda: len(later) >= 1)
    await asyncio.sleep(1.0)  # anything already committed would arrive now too
    stop.set()
    await task
    await publisher.close()
    assert later == [b"v5"]


async def test_a_handler_failing_again_and_again_makes_the_loop_unready_until_a_batch_commits(
    broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    topic = f"consumer.{uuid.uuid4().hex[:8]}"
    group = f"g-{uuid.uuid4().hex[:8]}"
    publisher = KafkaPublisher(broker.bootstrap)
    await publisher.publish([Record(topic, b"k", f"v{i}".encode()) for i in range(3)])
    await publisher.close()
    seen: list[bytes] = []
    database_down = True

    async def handler(records: Sequence[ConsumerRecord[bytes, bytes]]) -> None:
        if database_down:
            raise ConnectionRefusedError("connect to 10.0.0.7:5432 refused")
        seen.extend(r.value for r in records)

    caplog.set_level(logging.WARNING, logger="services.consumer")
    stop = asyncio.Event()
    loop = ConsumerLoop(broker.bootstrap, [topic], group, handler, max_backoff_s=0.2, session_timeout_ms=SESSION_MS,
                        max_restarts=2, restart_window_s=120)
    task = asyncio.create_task(loop.run(stop))
    try:
        assert loop.health().ok
        await eventually(lambda: not loop.health().ok, 60, "the loop never said it was failing", interval_s=0.05)
        reason = loop.health().reason
        assert group in reason and "ConnectionRefusedError" in reason and "restarts" in reason
        assert (REGISTRY.get_sample_value("wpc_consumer_restarts_total", {"group": group}) or 0) >= 3
        database_down = False
        await eventually(lambda: len(seen) == 3, 60, "the batch was not applied once the database came back")
        # Ready again once the batch's offsets are committed, which follows the handler's return.
        await eventually(lambda: loop.health().ok, 60, "the loop stayed unready after a committed batch",
                         interval_s=0.05)
        assert len(seen) == 3
    finally:
        stop.set()
        await task
    # The first failure is logged with where it came from (code locations), the repeats by class only,
    # and never the exception's text.
    first, *repeats = [r.getMessage() for r in caplog.records if group in r.getMessage()]
    assert "ConnectionRefusedError" in first and "test_consumer.py" in first
    assert repeats and all("again" in r and "File " not in r for r in repeats)
    assert not any("10.0.0.7" in r.getMessage() for r in caplog.records)


async def test_lag_past_the_bound_makes_the_loop_unready_and_catching_up_ready(broker: Broker) -> None:
    topic = f"consumer.{uuid.uuid4().hex[:8]}"
    group = f"g-{uuid.uuid4().hex[:8]}"
    publisher = KafkaPublisher(broker.bootstrap)
    await publisher.publish([Record(topic, b"k", f"v{i}".encode()) for i in range(5)])
    await publisher.close()
    seen: list[bytes] = []
    stuck = True

    async def handler(records: Sequence[ConsumerRecord[bytes, bytes]]) -> None:
        if stuck:
            raise TimeoutError
        seen.extend(r.value for r in records)

    stop = asyncio.Event()
    loop = ConsumerLoop(broker.bootstrap, [topic], group, handler, max_backoff_s=0.2, session_timeout_ms=SESSION_MS,
                        max_lag=4, max_restarts=10**6, lag_interval_s=0.05)
    task = asyncio.create_task(loop.run(stop))
    try:
        await eventually(lambda: loop.lag is not None, 60, "lag never measured", interval_s=0.05)
        assert loop.lag == 5
        assert loop.health() == Verdict(False, f"consumer {group}: 5 records behind (bound 4)")
        assert REGISTRY.get_sample_value("wpc_consumer_lag", {"group": group, "topic": topic}) == 5
        stuck = False
        await eventually(lambda: loop.lag == 0, 60, "lag never came back to 0", interval_s=0.05)
        assert loop.health().ok and len(seen) == 5
        assert REGISTRY.get_sample_value("wpc_consumer_lag", {"group": group, "topic": topic}) == 0
    finally:
        stop.set()
        await task
