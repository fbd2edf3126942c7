"""The Kafka port: publishing records, behind a small Protocol.

`KafkaPublisher` is the real adapter (aiokafka). It runs without idempotence or
transactions, which the local Tansu broker does not support, so delivery is
at-least-once: every record carries an event id and consumers dedupe on it.
`MemoryPublisher` is the in-memory fake for unit tests of pure logic; the contract
tests in tests/integration/test_bus.py run against both.

Errors: aiokafka raises assorted exceptions; they are translated here, once, into
`BusUnavailable`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError


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
                max_request_size=4 * 1024 * 1024,
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
            futures = [
                await producer.send(r.topic, r.value, key=r.key, headers=list(r.headers) or None)
                for r in records
            ]
            await asyncio.wait_for(asyncio.gather(*futures), self._timeout)
        except (KafkaError, OSError, TimeoutError) as exc:
            # Start afresh next time: a producer that saw its broker vanish may hold stale state.
            self._producer = None
            await _quiet_stop(producer)
            raise BusUnavailable(type(exc).__name__) from exc

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
