"""Contract of the Publisher port, run against the real adapter (Tansu) and the fake."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from services.bus import BusUnavailable, KafkaPublisher, MemoryPublisher, Publisher, Record
from tests.conftest import Broker
from tests.kafka_util import read_topic


@pytest.fixture(params=["kafka", "memory"])
async def publisher(request: pytest.FixtureRequest, broker: Broker) -> AsyncIterator[Publisher]:
    pub: Publisher = KafkaPublisher(broker.bootstrap) if request.param == "kafka" else MemoryPublisher()
    yield pub
    await pub.close()


async def published(pub: Publisher, broker: Broker, topic: str, n: int) -> list[tuple[bytes | None, bytes]]:
    if isinstance(pub, MemoryPublisher):
        return [(r.key, r.value) for r in pub.records if r.topic == topic]
    return [(r.key, r.value) for r in await read_topic(broker.bootstrap, topic, expect=n)]


async def test_publish_keeps_order_per_key(publisher: Publisher, broker: Broker) -> None:
    topic = f"contract.{uuid.uuid4().hex[:8]}"
    records = [Record(topic, f"p{i % 3}".encode(), f"v{i}".encode()) for i in range(30)]
    await publisher.publish(records)
    got = await published(publisher, broker, topic, 30)
    assert len(got) == 30
    for key in (b"p0", b"p1", b"p2"):
        values = [v for k, v in got if k == key]
        assert values == [r.value for r in records if r.key == key]


async def test_ping_is_true_when_broker_answers(publisher: Publisher) -> None:
    assert await publisher.ping() is True


async def test_unreachable_broker_raises_bus_unavailable() -> None:
    from services.embedded import free_port

    pub = KafkaPublisher(f"127.0.0.1:{free_port()}", timeout_s=1.0)
    with pytest.raises(BusUnavailable):
        await pub.publish([Record("t", None, b"x")])
    assert await pub.ping() is False
    await pub.close()
    fake = MemoryPublisher(available=False)
    with pytest.raises(BusUnavailable):
        await fake.publish([Record("t", None, b"x")])
