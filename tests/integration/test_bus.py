"""Contract of the Publisher port, run against the real adapter (Tansu) and the fake."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import cast

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


async def test_kafka_batches_land_where_the_default_partitioner_puts_each_key(broker: Broker) -> None:
    """One batch per partition must not move a key: murmur2 as aiokafka's `send` (and the
    Java client) would place it, order kept within each key, headers kept, across batches
    larger than aiokafka's default batch size."""
    from aiokafka import AIOKafkaProducer
    from aiokafka.partitioner import DefaultPartitioner

    topic = f"contract.{uuid.uuid4().hex[:8]}"
    pub = KafkaPublisher(broker.bootstrap)
    try:
        value = b"x" * 3000  # 40 records of 3 kB: more than aiokafka's default 16 kB batch
        records = [
            Record(topic, f"patient-{i % 7}".encode(), value + str(i).encode(), (("event_id", str(i).encode()),))
            for i in range(40)
        ]
        await pub.publish(records[:20])
        await pub.publish(records[20:])
    finally:
        await pub.close()
    got = await read_topic(broker.bootstrap, topic, expect=40)
    assert len(got) == 40
    probe = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
    await probe.start()
    try:
        partitions = sorted(await probe.partitions_for(topic))
    finally:
        await probe.stop()
    assert len(partitions) > 1
    for r in got:
        assert r.partition == DefaultPartitioner()(r.key, partitions, partitions)
        assert dict(r.headers)["event_id"] == r.value[3000:]
    for key in {r.key for r in records}:
        assert [g.value for g in got if g.key == key] == [r.value for r in records if r.key == key]


async def test_publish_says_where_each_record_landed(publisher: Publisher, broker: Broker) -> None:
    topic = f"contract.{uuid.uuid4().hex[:8]}"
    records = [Record(topic, f"p{i % 5}".encode(), f"v{i}".encode()) for i in range(20)]
    acks = await publisher.publish(records)
    assert len(acks) == len(records)
    if isinstance(publisher, MemoryPublisher):
        landed = {(a.partition, a.offset): publisher.logs[(topic, a.partition)][a.offset].value for a in acks}
    else:
        landed = {(r.partition, r.offset): r.value for r in await read_topic(broker.bootstrap, topic, expect=20)}
    assert [landed[(a.partition, a.offset)] for a in acks] == [r.value for r in records]
    assert all(a.base <= a.offset for a in acks)


async def test_broker_view_reads_back_ends_and_committed_offsets(publisher: Publisher, broker: Broker) -> None:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from services.bus import BrokerView

    view = cast(BrokerView, publisher)
    topic, group = f"contract.{uuid.uuid4().hex[:8]}", f"g-{uuid.uuid4().hex[:8]}"
    acks = await publisher.publish([Record(topic, b"k", f"v{i}".encode()) for i in range(3)])
    tp = (topic, acks[0].partition)
    assert (await view.end_offsets([tp]))[tp] > acks[-1].base
    assert await view.committed(group, [tp]) == {}
    if isinstance(publisher, MemoryPublisher):
        publisher.commit(group, topic, tp[1], 2)
    else:
        consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=group, enable_auto_commit=False)
        await consumer.start()
        try:
            consumer.assign([TopicPartition(*tp)])
            await consumer.commit({TopicPartition(*tp): 2})
        finally:
            await consumer.stop()
    assert await view.committed(group, [tp]) == {tp: 2}
    assert await view.cluster_id() == await view.cluster_id()


async def test_a_restarted_broker_is_a_new_cluster_with_empty_logs(own_broker: Broker) -> None:
    """What services.replay relies on to notice the embedded broker restarted."""
    pub = KafkaPublisher(own_broker.bootstrap, timeout_s=3.0)
    try:
        topic = f"contract.{uuid.uuid4().hex[:8]}"
        acks = await pub.publish([Record(topic, b"k", b"v")])
        tp = (topic, acks[0].partition)
        before = await pub.cluster_id()
        assert before and (await pub.end_offsets([tp]))[tp] == 1
        own_broker.stop()
        own_broker.start()
        for _ in range(50):  # the view reconnects on its next question
            try:
                after = await pub.cluster_id()
                break
            except BusUnavailable:
                await asyncio.sleep(0.1)
        assert after and after != before
        assert (await pub.end_offsets([tp]))[tp] == 0
        fake = MemoryPublisher()
        first = await fake.cluster_id()
        fake.lose()
        assert await fake.cluster_id() != first
    finally:
        await pub.close()
