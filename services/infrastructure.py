"""The database and the broker a command runs against: the configured ones, or embedded
ones started here (`services.embedded`) and watched until the command ends.

`infrastructure` is what `wpc up` and `wpc bench ingest` enter first. Before starting,
servers a killed run left behind on the data directory are stopped (`embedded.reclaim`);
while running, a guard process (`services.reaper`) stops them should this process die
without its ``finally``; leaving stops them. `keep_broker_up` restarts an embedded broker
that exits while the system runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

from services import lifecycle, reaper
from services.embedded import BROKER_STOP, PG_STOP, PG_STOP_NOW, EmbeddedBroker, EmbeddedPostgres, reclaim
from services.settings import S

log = logging.getLogger(__name__)


@dataclass
class Servers:
    """The embedded servers of one run, and the guard that stops them if we die first."""

    pg: EmbeddedPostgres | None = None
    broker: EmbeddedBroker | None = None
    guard: reaper.Guard | None = None

    def stop_now(self) -> None:
        """A forced exit's step: stop both servers within a few seconds (blocking)."""
        if self.broker is not None:
            self.broker.stop()
        if self.pg is not None:
            self.pg.stop(PG_STOP_NOW)


@contextlib.asynccontextmanager
async def infrastructure(settings: S, servers: Servers | None = None) -> AsyncIterator[S]:
    """Yield ``settings`` pointing at a database and a broker, starting embedded ones if needed.

    Before starting, servers a killed run left behind on the data directory are stopped
    (`services.embedded.reclaim`); while running, a guard process stops them should this
    process die without its ``finally``; leaving stops them."""
    servers = servers if servers is not None else Servers()
    embedded = not settings.database_url or not settings.kafka_bootstrap_servers
    if embedded:
        for line in reclaim(settings.data_dir):
            log.warning("%s", line)
            print(line, flush=True)
        servers.guard = reaper.Guard()
        servers.guard.start()
    try:
        updates: dict[str, object] = {}
        if not settings.database_url:
            servers.pg = EmbeddedPostgres(settings.data_dir)
            updates["database_url"] = await asyncio.to_thread(servers.pg.start)
            if servers.guard is not None and servers.pg.pid is not None:
                servers.guard.watch(servers.pg.pid, PG_STOP)
            print(f"embedded PostgreSQL: data in {servers.pg.pgdata}", flush=True)
        if not settings.kafka_bootstrap_servers:
            servers.broker = EmbeddedBroker()
            await _start_broker(servers, settings.data_dir)
            updates["kafka_bootstrap_servers"] = servers.broker.bootstrap_servers
            print(f"embedded Kafka-protocol broker (Tansu): {servers.broker.bootstrap_servers}", flush=True)
        yield settings.model_copy(update=updates)
    finally:
        # Each in turn, whatever the one before did: the broker first (its clients are gone).
        try:
            if servers.broker is not None:
                await asyncio.to_thread(servers.broker.stop)
        finally:
            try:
                if servers.pg is not None:
                    await asyncio.to_thread(servers.pg.stop)
            finally:
                if servers.guard is not None:
                    servers.guard.dismiss()


async def _start_broker(servers: Servers, data_dir: Path) -> None:
    broker = servers.broker
    assert broker is not None
    broker.launch(data_dir / "tansu.log")  # on the loop's thread: the guard learns the pid at once
    if servers.guard is not None and broker.pid is not None:
        servers.guard.watch(broker.pid, BROKER_STOP)
    await asyncio.to_thread(broker.wait_ready)


async def keep_broker_up(servers: Servers, data_dir: Path, stop: asyncio.Event, on_restart: Callable[[], None]) -> None:
    """Restart the embedded broker if it exits while we run (crash, killed): on the same port,
    so every client reconnects by itself; its topics start empty, and the relays publish
    again what the consumers had not read (`services.replay`). Looked at every second; a
    failed restart is tried again the next."""

    async def look() -> float:
        broker = servers.broker
        status = broker.exited() if broker is not None else None
        if broker is not None and status is not None:
            log.warning("embedded broker exited with status %s; restarting it on port %d", status, broker.port)
            await _start_broker(servers, data_dir)
            on_restart()
        return 1.0

    await lifecycle.pause(stop, 1.0)
    await lifecycle.repeat(stop, look, what="restarting the embedded broker", backoff=lifecycle.Backoff(1.0, 1.0))
