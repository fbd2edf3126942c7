"""The Kafka port: publishing records, behind a small Protocol.

`KafkaPublisher` is the real adapter (aiokafka). It runs without idempotence or
transactions, which the local Tansu broker does not support, so delivery is
at-least-once: every record carries an event id and consumers dedupe on it.
`MemoryPublisher` is the in-memory fake for unit tests of pure logic; the contract
tests in tests/integration/test_bus.py run against both.

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
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.partitioner import murmur2

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


class Publisher(Protocol):
    async def publish(self, records: Sequence[Record]) -> None:
        """Deliver all records, in order per key, or raise BusUnavailable."""

    async def ping(self) -> bool:
        """True when the broker answers a metadata request."""

    async def close(self) -> None: ...


class KafkaPublisher:
    def __init__(self, bootstrap_servers: str, *, timeout_s: float = 10.0) -> None:
        self._bootstrap = bootstrap_servers
        self._timeout = timeout_s
        self._producer: AIOKafkaProducer | None = None
        # /readyz pings and the relay both get here; without the lock each may start a producer.
        self._starting = asyncio.Lock()
        self._hashes: dict[bytes, int] = {}

    async def _ensure(self) -> AIOKafkaProducer:
        async with self._starting:
            return await self._start_once()

    async def _start_once(self) -> AIOKafkaProducer:
        if self._producer is None:
            producer = AIOKafkaProducer(
                bootstrap_servers=self._bootstrap,
                acks="all",
                enable_idempotence=False,
                linger_ms=2,
                request_timeout_ms=int(self._timeout * 1000),
                retry_backoff_ms=200,
                max_request_size=_MAX_REQUEST_BYTES,
                max_batch_size=_BATCH_BYTES,
            )
            try:
                await asyncio.wait_for(producer.start(), self._timeout)
            except (KafkaError, OSError, TimeoutError) as exc:
                await _quiet_stop(producer)
                raise BusUnavailable(type(exc).__name__) from exc
            self._producer = producer
        return self._producer

    async def publish(self, records: Sequence[Record]) -> None:
        producer = await self._ensure()
        try:
            # Group by partition, keeping the order of the records within each: the order
            # per key is the order per partition.
            groups: dict[tuple[str, int], list[Record]] = {}
            partitions: dict[str, tuple[list[int], list[int]]] = {}
            for r in records:
                if r.topic not in partitions:
                    all_partitions = sorted(await producer.partitions_for(r.topic))
                    available = list(producer.client.cluster.available_partitions_for_topic(r.topic))
                    partitions[r.topic] = (all_partitions, available)
                groups.setdefault((r.topic, self._partition(r.key, *partitions[r.topic])), []).append(r)
            futures = []
            for (topic, partition), group in groups.items():
                for batch in _batches(producer, group):
                    futures.append(await producer.send_batch(batch, topic, partition=partition))
            await asyncio.wait_for(asyncio.gather(*futures), self._timeout)
        except (KafkaError, OSError, TimeoutError) as exc:
            # Start afresh next time: a producer that saw its broker vanish may hold stale state.
            self._producer = None
            await _quiet_stop(producer)
            raise BusUnavailable(type(exc).__name__) from exc

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

    async def ping(self) -> bool:
        try:
            producer = await self._ensure()
            return bool(await asyncio.wait_for(producer.client.force_metadata_update(), 3.0))
        except (BusUnavailable, KafkaError, OSError, TimeoutError):
            return False

    async def close(self) -> None:
        if self._producer is not None:
            await _quiet_stop(self._producer)
            self._producer = None


def _batches(producer: AIOKafkaProducer, records: list[Record]) -> list[Any]:
    """The records of one partition as few closed aiokafka batches as fit, in order."""
    out: list[Any] = []
    batch = producer.create_batch()
    for r in records:
        headers = list(r.headers)
        if batch.append(key=r.key, value=r.value, timestamp=None, headers=headers) is None:
            batch.close()
            out.append(batch)
            batch = producer.create_batch()
            if batch.append(key=r.key, value=r.value, timestamp=None, headers=headers) is None:
                raise ValueError(f"a record of {len(r.value)} bytes does not fit in a batch")  # our fault
    batch.close()
    out.append(batch)
    return out


async def _quiet_stop(producer: AIOKafkaProducer) -> None:
    try:
        await asyncio.wait_for(producer.stop(), 5.0)
    except (KafkaError, OSError, TimeoutError):
        pass


@dataclass
class MemoryPublisher:
    """In-memory fake: keeps what was published; `available=False` simulates an outage."""

    records: list[Record] = field(default_factory=list)
    available: bool = True

    async def publish(self, records: Sequence[Record]) -> None:
        if not self.available:
            raise BusUnavailable("fake broker is down")
        self.records.extend(records)

    async def ping(self) -> bool:
        return self.available

    async def close(self) -> None:
        return None
