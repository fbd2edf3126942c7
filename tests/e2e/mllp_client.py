"""Talking MLLP to a running listener in end-to-end tests: a raw peer, many idle sockets,
a lock that keeps frames in flight, and the listener's metrics read back.

Metrics are process-global counters: tests compare deltas.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import socket
import ssl
from typing import Any

import asyncpg
import pytest
from prometheus_client import REGISTRY

from adt_listener.mllp import Frame, MllpFramer, encode
from services.db import normalize_url


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def framing_errors(kind: str) -> float:
    return sample("wpc_mllp_framing_errors_total", kind=kind)


def refused(reason: str) -> float:
    return sample("wpc_mllp_refused_connections_total", reason=reason)


def tls_refused(reason: str) -> float:
    return sample("wpc_mllp_tls_refused_total", reason=reason)


def evicted(reason: str) -> float:
    return sample("wpc_mllp_evicted_connections_total", reason=reason)


def open_connections() -> float:
    return sample("wpc_mllp_open_connections")


def ensure_fd_limit(needed: int) -> None:
    """Raise this process's soft limit on open files to ``needed`` (both ends of every
    test connection live in it), or skip when the hard limit is lower."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"needs {needed} open files, the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


async def idle_sockets(port: int, n: int, source: str = "127.0.0.1") -> list[socket.socket]:
    """``n`` TCP connections to the listener from ``source`` that never send a byte."""
    loop = asyncio.get_running_loop()
    socks: list[socket.socket] = []

    async def connect() -> None:
        sock = socket.socket()
        socks.append(sock)
        sock.setblocking(False)
        sock.bind((source, 0))
        await loop.sock_connect(sock, ("127.0.0.1", port))

    try:
        await asyncio.gather(*(connect() for _ in range(n)))
    except BaseException:
        close_all(socks)
        raise
    return socks


def close_all(socks: list[socket.socket]) -> None:
    for sock in socks:
        sock.close()


class Peer:
    """A raw MLLP connection: write frames, read ACK payloads, notice the server closing."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self._framer = MllpFramer()
        self._frames: list[bytes] = []

    @classmethod
    async def open(cls, port: int, *, tls: ssl.SSLContext | None = None, source: str = "127.0.0.1") -> Peer:
        """Connect to the listener on 127.0.0.1 from ``source`` (any 127.x.y.z: Linux routes
        the whole loopback block to lo, so tests can be several hosts)."""
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, ssl=tls, local_addr=(source, 0)), 5
        )
        return cls(reader, writer)

    def send(self, *messages: bytes) -> None:
        self.writer.write(b"".join(encode(m) for m in messages))

    async def acks(self, n: int, timeout_s: float = 10.0) -> list[bytes]:
        """The next ``n`` frames from the server; fails on EOF or after ``timeout_s``."""
        async with asyncio.timeout(timeout_s):
            while len(self._frames) < n:
                data = await self.reader.read(65_536)
                assert data, f"server closed the connection after {len(self._frames)} of {n} ACKs"
                for event in self._framer.feed(data):
                    assert isinstance(event, Frame), f"server broke MLLP framing: {event}"
                    self._frames.append(event.payload)
        out, self._frames = self._frames[:n], self._frames[n:]
        return out

    async def closed_by_server(self, timeout_s: float = 2.0, *, reset_ok: bool = False) -> None:
        """Wait for the server to close (EOF), with no frame left unread."""
        async with asyncio.timeout(timeout_s):
            try:
                data = await self.reader.read(65_536)
            except ConnectionResetError:
                if not reset_ok:
                    raise
                data = b""
        assert data == b"", f"expected EOF, got {data[:80]!r}"
        assert not self._frames

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):  # ssl.SSLError included: the server may have closed first
            await asyncio.wait_for(self.writer.wait_closed(), 5)


class TableLock:
    """LOCK TABLE adt_message IN SHARE MODE from another session: the store's INSERT waits
    until `release`, so frames handed to the store stay in flight meanwhile."""

    def __init__(self, conn: asyncpg.Connection, tx: Any) -> None:
        self._conn = conn
        self._tx = tx

    @classmethod
    async def acquire(cls, database_url: str) -> TableLock:
        dsn = normalize_url(database_url).replace("postgresql+asyncpg", "postgresql")
        conn = await asyncpg.connect(dsn)
        tx = conn.transaction()
        await tx.start()
        await conn.execute("LOCK TABLE adt_message IN SHARE MODE")
        return cls(conn, tx)

    async def release(self) -> None:
        if self._conn.is_closed():
            return
        try:
            await self._tx.rollback()
        finally:
            await self._conn.close()
