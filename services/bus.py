"""The Kafka port: publishing records, behind a small Protocol.

`KafkaPublisher` is the real adapter (aiokafka). Delivery is at-least-once: every record
carries an event id and consumers dedupe on it. ``acks=all`` always: a record is
acknowledged once every in-sync replica has it (deploy/ runs Kafka with replication 3,
``min.insync.replicas`` 2 and no unclean leader election, so an acknowledged record
survives a broker). Idempotence (no duplicate from a producer's own retry) is a setting,
``WPC_KAFKA_IDEMPOTENCE``: on in deploy/, off for Tansu, which does not support it.
`MemoryPublisher` is the in-memory fake for unit tests of pure logic; the contract
tests in tests/integration/test_bus.py run against both.

`publish` returns where each record landed (partition, offset), and `BrokerView` reads
back what the broker holds (end offsets, consumer groups' committed offsets, cluster
id): the relay (`services.replay`) compares the two to notice a broker that lost
records, and re-publishes them from PostgreSQL.

Errors: aiokafka raises assorted exceptions; they are translated here, once, into
`BusUnavailable`.

`KafkaPublisher.publish` hands aiokafka one batch per partition (`send_batch`)
instead of one `send` per record: per record, `send` builds a future, looks up
metadata and hashes the key in pure Python, which cost the listener more CPU than the
record itself. Partitions are chosen exactly as aiokafka's default partitioner does
(murmur2 of the key, as the Java client), so a key lands where it always did; the hash
of a key is remembered, since a patient's key comes back with each of their events.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka import TopicPartition as KafkaTP
from aiokafka.errors import KafkaError
from aiokafka.partitioner import murmur2
from aiokafka.protocol.metadata import MetadataRequest

from services.settings import ServiceSettings

T = TypeVar("T")

_BATCH_BYTES = 1024 * 1024  # one produce batch per partition and publish call, in practice
_MAX_REQUEST_BYTES = 4 * 1024 * 1024
_HASH_CACHE_MAX = 100_000  # keys remembered (32-byte patient keys: a few MB at most)


class BusUnavailable(Exception):
    """The broker did not take the records (down, unreachable or timing out)."""


@dataclass(frozen=True, slots=True)
class Record:
    topic: str
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = ()


@dataclass(frozen=True, slots=True)
class Ack:
    """Where the broker put a record; ``base`` is the first offset of the batch it came in
    (Tansu reports a partition's end as the last batch's base + 1: `services.replay`
    compares ends with bases)."""

    partition: int
    offset: int
    base: int


class Publisher(Protocol):
    async def publish(self, records: Sequence[Record]) -> list[Ack]:
        """Deliver all records, in order per key, or raise BusUnavailable. Returns one
        `Ack` per record, in the order given."""

    async def ping(self) -> bool:
        """True when the broker answers a metadata request."""

    async def close(self) -> None: ...


TopicPartition = tuple[str, int]


class BrokerView(Protocol):
    """What the broker holds, read back. Each raises BusUnavailable when it cannot tell."""

    async def cluster_id(self) -> str | None:
        """The cluster's id: a new one means a new (empty) cluster."""

    async def end_offsets(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int]: ...

    async def committed(self, group: str, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        """The group's committed offsets; partitions it never committed are absent."""


class KafkaPublisher:
    def __init__(
        self, bootstrap_servers: str, *, timeout_s: float = 10.0, idempotence: bool = False,
        client_options: Mapping[str, Any] | None = None,
    ) -> None:
        """``client_options``: how this service authenticates (`ServiceSettings.kafka_client_options`)."""
        self._bootstrap = bootstrap_servers
        self._options = dict(client_options or {})
        self._timeout = timeout_s
        self._idempotence = idempotence
        self._producer: AIOKafkaProducer | None = None
        # /readyz pings and the relay both get here; without the lock each may start a producer.
        self._starting = asyncio.Lock()
        self._hashes: dict[bytes, int] = {}
        self._readers: dict[str | None, AIOKafkaConsumer] = {}  # BrokerView: by group (None: offsets)

    @classmethod
    def of(cls, settings: ServiceSettings) -> KafkaPublisher:
        return cls(settings.kafka_bootstrap_servers, timeout_s=settings.kafka_timeout_s,
                   idempotence=settings.kafka_idempotence, client_options=settings.kafka_client_options())

    async def _ensure(self) -> AIOKafkaProducer:
        async with self._starting:
            return await self._start_once()

    async def _start_once(self) -> AIOKafkaProducer:
        if self._producer is None:
            producer = AIOKafkaProducer(
                bootstrap_servers=self._bootstrap,
                acks="all",
                enable_idempotence=self._idempotence,
                linger_ms=2,
                request_timeout_ms=int(self._timeout * 1000),
                retry_backoff_ms=200,
                max_request_size=_MAX_REQUEST_BYTES,
                max_batch_size=_BATCH_BYTES,
                **self._options,
            )
            try:
                await asyncio.wait_for(producer.start(), self._timeout)
            except (KafkaError, OSError, TimeoutError) as exc:
                await _quiet_stop(producer)
                raise BusUnavailable(type(exc).__name__) from exc
            self._producer = producer
        return self._producer

    async def publish(self, records: Sequence[Record]) -> list[Ack]:
        producer = await self._ensure()
        try:
            # Group by partition, keeping the order of the records within each: the order
            # per key is the order per partition.
            groups: dict[tuple[str, int], list[int]] = {}
            partitions: dict[str, tuple[list[int], list[int]]] = {}
            for i, r in enumerate(records):
                if r.topic not in partitions:
                    all_partitions = sorted(await producer.partitions_for(r.topic))
                    available = list(producer.client.cluster.available_partitions_for_topic(r.topic))
                    partitions[r.topic] = (all_partitions, available)
                groups.setdefault((r.topic, self._partition(r.key, *partitions[r.topic])), []).append(i)
            futures = []
            sent: list[tuple[int, list[int]]] = []  # (partition, indexes of the batch's records)
            for (topic, partition), indexes in groups.items():
                for batch, members in _batches(producer, records, indexes):
                    futures.append(await producer.send_batch(batch, topic, partition=partition))
                    sent.append((partition, members))
            metadata = await asyncio.wait_for(asyncio.gather(*futures), self._timeout)
        except (KafkaError, OSError, TimeoutError) as exc:
            # Start afresh next time: a producer that saw its broker vanish may hold stale state.
            self._producer = None
            await _quiet_stop(producer)
            raise BusUnavailable(type(exc).__name__) from exc
        acks: list[Ack | None] = [None] * len(records)
        for (partition, members), md in zip(sent, metadata, strict=True):
            for n, i in enumerate(members):  # a batch's records take consecutive offsets from its base
                acks[i] = Ack(partition, md.offset + n, md.offset)
        return [a for a in acks if a is not None]

    def _partition(self, key: bytes | None, all_partitions: list[int], available: list[int]) -> int:
        """aiokafka's `DefaultPartitioner`, with the key's hash remembered."""
        if key is None:
            return random.choice(available or all_partitions)
        hashed = self._hashes.get(key)
        if hashed is None:
            hashed = murmur2(key) & 0x7FFFFFFF
            if len(self._hashes) >= _HASH_CACHE_MAX:
                self._hashes.clear()
            self._hashes[key] = hashed
        return all_partitions[hashed % len(all_partitions)]

    async def ensure_topics(self, topics: Sequence[str]) -> None:
        """Have the broker create these topics now if it creates topics on first use (Tansu,
        Kafka with auto-creation): a consumer that subscribes before its topic exists gets
        nothing until its next metadata refresh, seconds later."""
        producer = await self._ensure()
        try:
            for topic in topics:
                await asyncio.wait_for(producer.partitions_for(topic), self._timeout)
        except (KafkaError, OSError, TimeoutError) as exc:
            raise BusUnavailable(type(exc).__name__) from exc

    async def ping(self) -> bool:
        try:
            producer = await self._ensure()
            return bool(await asyncio.wait_for(producer.client.force_metadata_update(), 3.0))
        except (BusUnavailable, KafkaError, OSError, TimeoutError):
            return False

    async def close(self) -> None:
        readers, self._readers = self._readers, {}
        for reader in readers.values():
            with contextlib.suppress(KafkaError, OSError, TimeoutError):
                await asyncio.wait_for(reader.stop(), 5.0)
        if self._producer is not None:
            await _quiet_stop(self._producer)
            self._producer = None

    # -- BrokerView -----------------------------------------------------------------------

    async def _reader(self, group: str | None) -> AIOKafkaConsumer:
        """A consumer that only asks (never subscribes: it joins no group, takes no partition).
        Two relays of one process share this publisher: one creates, the other waits."""
        async with self._starting:
            return await self._reader_once(group)

    async def _reader_once(self, group: str | None) -> AIOKafkaConsumer:
        reader = self._readers.get(group)
        if reader is None:
            reader = AIOKafkaConsumer(bootstrap_servers=self._bootstrap, group_id=group, enable_auto_commit=False,
                                      request_timeout_ms=int(self._timeout * 1000), **self._options)
            try:
                await asyncio.wait_for(reader.start(), self._timeout)
            except (KafkaError, OSError, TimeoutError) as exc:
                with contextlib.suppress(KafkaError, OSError, TimeoutError):
                    await asyncio.wait_for(reader.stop(), 5.0)
                raise BusUnavailable(type(exc).__name__) from exc
            self._readers[group] = reader
        return reader

    async def _asking(self, group: str | None, ask: Callable[[AIOKafkaConsumer], Awaitable[T]]) -> T:
        reader = await self._reader(group)
        try:
            return await asyncio.wait_for(ask(reader), self._timeout)
        except (KafkaError, OSError, TimeoutError) as exc:
            self._readers.pop(group, None)
            with contextlib.suppress(KafkaError, OSError, TimeoutError):
                await asyncio.wait_for(reader.stop(), 5.0)
            raise BusUnavailable(type(exc).__name__) from exc

    async def cluster_id(self) -> str | None:
        async def ask(reader: AIOKafkaConsumer) -> str | None:
            client = reader._client  # the metadata request the client itself sends, read whole
            node = client.get_random_node()
            response = await client.send(node if node is not None else "bootstrap", MetadataRequest([]))
            found = getattr(response, "cluster_id", None)
            return str(found) if found else None

        return await self._asking(None, ask)

    async def end_offsets(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        if not partitions:
            return {}

        async def ask(reader: AIOKafkaConsumer) -> dict[TopicPartition, int]:
            ends = await reader.end_offsets([KafkaTP(t, p) for t, p in partitions])
            return {(tp.topic, tp.partition): int(offset) for tp, offset in ends.items()}

        return await self._asking(None, ask)

    async def committed(self, group: str, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        async def ask(reader: AIOKafkaConsumer) -> dict[TopicPartition, int]:
            found: dict[TopicPartition, int] = {}
            for topic, partition in partitions:
                offset = await reader.committed(KafkaTP(topic, partition))
                if offset is not None and offset >= 0:
                    found[(topic, partition)] = int(offset)
            return found

        return await self._asking(group, ask)


def _batches(producer: AIOKafkaProducer, records: Sequence[Record], indexes: list[int]) -> list[tuple[Any, list[int]]]:
    """The records (of one partition, by index) as few closed aiokafka batches as fit, in
    order, each with the indexes of the records it holds."""
    out: list[tuple[Any, list[int]]] = []
    batch = producer.create_batch()
    members: list[int] = []
    for i in indexes:
        r = records[i]
        headers = list(r.headers)
        if batch.append(key=r.key, value=r.value, timestamp=None, headers=headers) is None:
            batch.close()
            out.append((batch, members))
            batch, members = producer.create_batch(), []
            if batch.append(key=r.key, value=r.value, timestamp=None, headers=headers) is None:
                raise ValueError(f"a record of {len(r.value)} bytes does not fit in a batch")  # our fault
        members.append(i)
    batch.close()
    out.append((batch, members))
    return out


async def _quiet_stop(producer: AIOKafkaProducer) -> None:
    try:
        await asyncio.wait_for(producer.stop(), 5.0)
    except (KafkaError, OSError, TimeoutError):
        pass


@dataclass
class MemoryPublisher:
    """In-memory fake of the Publisher and the BrokerView: keeps what was published, per
    partition (``partitions`` of them, a key's partition from a stable hash), and groups'
    commits (`commit`); ``available=False`` simulates an outage, `lose` a broker that came
    back empty (a new cluster id, logs and commits gone)."""

    records: list[Record] = field(default_factory=list)
    available: bool = True
    partitions: int = 4
    logs: dict[TopicPartition, list[Record]] = field(default_factory=dict)
    commits: dict[str, dict[TopicPartition, int]] = field(default_factory=dict)
    cluster: str = "memory-1"

    def partition_of(self, record: Record) -> int:
        return (murmur2(record.key) & 0x7FFFFFFF) % self.partitions if record.key is not None else 0

    async def publish(self, records: Sequence[Record]) -> list[Ack]:
        if not self.available:
            raise BusUnavailable("fake broker is down")
        acks = []
        bases: dict[TopicPartition, int] = {}
        for r in records:
            tp = (r.topic, self.partition_of(r))
            log = self.logs.setdefault(tp, [])
            bases.setdefault(tp, len(log))
            acks.append(Ack(tp[1], len(log), bases[tp]))
            log.append(r)
        self.records.extend(records)
        return acks

    def commit(self, group: str, topic: str, partition: int, offset: int) -> None:
        self.commits.setdefault(group, {})[(topic, partition)] = offset

    def lose(self) -> None:
        number = int(self.cluster.rsplit("-", 1)[1]) + 1
        self.cluster = f"memory-{number}"
        self.logs.clear()
        self.commits.clear()

    async def ping(self) -> bool:
        return self.available

    async def close(self) -> None:
        return None

    async def cluster_id(self) -> str | None:
        self._check()
        return self.cluster

    async def end_offsets(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        self._check()
        return {tp: len(self.logs.get(tp, [])) for tp in partitions}

    async def committed(self, group: str, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        self._check()
        mine = self.commits.get(group, {})
        return {tp: mine[tp] for tp in partitions if tp in mine}

    def _check(self) -> None:
        if not self.available:
            raise BusUnavailable("fake broker is down")
