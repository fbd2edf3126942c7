"""The MLLP server (`adt_listener.server`) over real TCP and TLS sockets.

Timeouts, the connection cap, pipelining with flow control, half-close, mutual TLS and
the graceful stop, each against a real listener (PostgreSQL, broker). Where a test needs
frames to be "in flight" (read by the server, not yet committed) it holds a lock on
adt_message from another database session, so the store's group commit waits for the
test instead of for luck.

Metrics are process-global counters: tests compare deltas. Who gets a slot when the
server is full or flooded, and TLS refusals: test_mllp_lockout.py, test_mllp_tls_refusals.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from pathlib import Path
from typing import Any

import pytest

from adt_listener import server as server_module
from adt_listener.mllp import END, START, encode
from bench.synthetic import synthetic_feed
from tests.e2e.conftest import StartListener
from tests.e2e.helpers import ack_code, ack_fields, control_id, db_fetch, eventually, msa_control_id
from tests.e2e.mllp_client import (
    Peer,
    TableLock,
    evicted,
    framing_errors,
    open_connections,
    refused,
    tls_refused,
)
from tests.e2e.pki import KNOWN_CN, client_tls, make_pki

ACCEPTED = ("AA", "CA")
REJECTED = ("AR", "CR")


# --- helpers ------------------------------------------------------------------------------------


async def stored_control_ids(database_url: str) -> list[str]:
    rows = await db_fetch(database_url, "SELECT control_id FROM adt_message")
    return [r["control_id"] for r in rows]


# --- 1. idle timeout ----------------------------------------------------------------------------


async def test_silent_connection_is_closed_after_idle_timeout_and_a_talking_one_is_not(
    start_listener: StartListener,
) -> None:
    feed = synthetic_feed(12, seed=301)
    async with start_listener(mllp_idle_timeout_s=0.3) as listener:
        port = listener.endpoints.mllp_port
        idle_before = framing_errors("idle_timeout")
        silent = await Peer.open(port)
        talker = await Peer.open(port)
        loop = asyncio.get_running_loop()
        opened = loop.time()

        async def talk() -> list[bytes]:
            acks: list[bytes] = []
            for message in feed:  # one message every ~0.1 s for > 1.2 s: 4x the idle timeout
                talker.send(message)
                acks += await talker.acks(1, timeout_s=5)
                await asyncio.sleep(0.1)
            return acks

        talking = asyncio.create_task(talk())
        await silent.closed_by_server(timeout_s=2)
        silent_for = loop.time() - opened
        acks = await asyncio.wait_for(talking, 10)
        talked_for = loop.time() - opened
        # Only the silent one was closed, and not before its time.
        assert framing_errors("idle_timeout") - idle_before == 1
        assert 0.25 <= silent_for < 2
        assert talked_for > 4 * 0.3
        assert [msa_control_id(a) for a in acks] == [control_id(m) for m in feed]
        assert all(ack_code(a) in ACCEPTED for a in acks)
        await silent.close()
        await talker.close()


# --- 2. read timeout ----------------------------------------------------------------------------


async def test_stalled_frame_is_closed_after_read_timeout_and_not_stored(
    start_listener: StartListener, database_url: str
) -> None:
    complete, stalled, trickled = synthetic_feed(3, seed=302)
    async with start_listener(mllp_read_timeout_s=0.3, mllp_idle_timeout_s=30) as listener:
        port = listener.endpoints.mllp_port
        read_before = framing_errors("read_timeout")
        idle_before = framing_errors("idle_timeout")
        loop = asyncio.get_running_loop()

        # A complete frame (answered), then the start of another and silence. The server's
        # read timer starts when it reads that start, so after this write: however long the
        # ACK takes on a loaded machine, the close comes a read timeout after the write or later.
        peer = await Peer.open(port)
        stalled_at = loop.time()
        peer.writer.write(encode(complete) + START + stalled[: len(stalled) // 2])
        [ack] = await peer.acks(1)
        assert msa_control_id(ack) == control_id(complete) and ack_code(ack) in ACCEPTED
        await peer.closed_by_server(timeout_s=2)
        assert loop.time() - stalled_at >= 0.25
        assert framing_errors("read_timeout") - read_before == 1

        # A frame trickling in a byte every 0.05 s: bytes keep coming, but the frame does not
        # complete within the read timeout, so it is closed all the same.
        slow = await Peer.open(port)

        async def trickle() -> None:
            slow.writer.write(START)
            for byte in trickled:
                await asyncio.sleep(0.05)
                slow.writer.write(bytes([byte]))

        trickling = asyncio.create_task(trickle())
        try:
            await slow.closed_by_server(timeout_s=2, reset_ok=True)
        finally:
            trickling.cancel()
            await asyncio.gather(trickling, return_exceptions=True)
        assert framing_errors("read_timeout") - read_before == 2
        assert framing_errors("idle_timeout") == idle_before  # timed as a frame, not as silence
        await peer.close()
        await slow.close()

    assert await stored_control_ids(database_url) == [control_id(complete)]


# --- 3. connection cap: evict the idle, never a frame begun or unanswered --------------------


def server_sees(listener: Any, state: str) -> bool:
    """Whether some connection of the listener is mid-frame (``in_frame``) or has frames at the store (``busy``)."""
    return any(getattr(c, state) for c in listener.mllp._connections)


async def test_full_server_evicts_idle_connections_but_never_one_mid_frame_or_with_frames_unanswered(
    start_listener: StartListener, database_url: str
) -> None:
    feed = synthetic_feed(6, seed=303)
    async with start_listener(mllp_max_connections=3, mllp_first_frame_timeout_s=60) as listener:
        port = listener.endpoints.mllp_port
        refused_before = refused("max_connections")
        idle_before, never_before = evicted("idle_unknown"), evicted("never_sent")
        base = open_connections()

        # idle: sent a frame, got its ACK, then silence.
        idle = await Peer.open(port)
        idle.send(feed[0])
        assert [msa_control_id(a) for a in await idle.acks(1)] == [control_id(feed[0])]
        lock = await TableLock.acquire(database_url)
        try:
            # stored: a frame read and at the store, its ACK not yet written (the lock holds it).
            stored = await Peer.open(port)
            stored.send(feed[1])
            await eventually(lambda: server_sees(listener, "busy"), what="the frame never reached the store")
            # mid: half a frame.
            mid = await Peer.open(port)
            mid.writer.write(START + feed[2][:40])
            await eventually(lambda: server_sees(listener, "in_frame"), what="the server never read the half frame")
            assert open_connections() - base == 3

            # Full. A newcomer takes the idle connection's slot, not the other two.
            newcomer = await Peer.open(port)
            await idle.closed_by_server()
            assert evicted("idle_unknown") - idle_before == 1
            # The next one takes the newcomer's (it never sent a frame) ...
            second = await Peer.open(port)
            await newcomer.closed_by_server(reset_ok=True)
            assert evicted("never_sent") - never_before == 1
            second.writer.write(START + feed[3][:40])
            await eventually(lambda: sum(c.in_frame for c in listener.mllp._connections) == 2,
                             what="the server never read the second half frame")
            # ... and with every connection mid-frame or waiting for the store, the next is refused.
            third = await Peer.open(port)
            await third.closed_by_server()
            assert refused("max_connections") - refused_before == 1
            assert open_connections() - base == 3
        finally:
            await lock.release()

        # Nothing the kept connections sent was lost.
        [ack1] = await stored.acks(1)
        mid.writer.write(feed[2][40:] + END)
        second.writer.write(feed[3][40:] + END)
        [ack2], [ack3] = await mid.acks(1), await second.acks(1)
        assert [msa_control_id(a) for a in (ack1, ack2, ack3)] == [control_id(m) for m in feed[1:4]]
        assert all(ack_code(a) in ACCEPTED for a in (ack1, ack2, ack3))
        assert evicted("idle_unknown") - idle_before == 1 and evicted("never_sent") - never_before == 1
        for peer in (idle, stored, mid, newcomer, second, third):
            await peer.close()

    assert sorted(await stored_control_ids(database_url)) == sorted(control_id(m) for m in feed[:4])


# --- 4. pipelining and flow control -------------------------------------------------------------


async def test_600_pipelined_frames_without_reading_acks_pause_reading_and_all_are_answered_in_order(
    start_listener: StartListener, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    n = 600
    assert n > 2 * server_module._MAX_WAITING
    feed = synthetic_feed(n, seed=304)
    paused: list[int] = []  # frames waiting each time a read left the connection paused
    real_data_received = server_module._Connection.data_received

    def data_received(self: server_module._Connection, data: bytes) -> None:
        real_data_received(self, data)
        if self._read_paused:
            paused.append(len(self._waiting))

    monkeypatch.setattr(server_module._Connection, "data_received", data_received)
    async with start_listener() as listener:
        lock = await TableLock.acquire(database_url)
        try:
            peer = await Peer.open(listener.endpoints.mllp_port)
            peer.send(*feed)  # all 600 at once; not a byte read back until all are answered
            # The first group waits for the lock; the frames behind it pile up until the
            # server stops reading the socket.
            await eventually(lambda: bool(paused), what="server never paused reading")
        finally:
            await lock.release()
        acks = await peer.acks(n, timeout_s=30)
        await peer.close()
    assert [msa_control_id(a) for a in acks] == [control_id(m) for m in feed]
    assert all(ack_code(a) in ACCEPTED for a in acks)
    assert sorted(await stored_control_ids(database_url)) == sorted(control_id(m) for m in feed)


# --- 5. half-close ------------------------------------------------------------------------------


async def test_half_closed_sender_still_gets_its_acks(start_listener: StartListener, database_url: str) -> None:
    feed = synthetic_feed(5, seed=305)
    async with start_listener() as listener:
        eof_in_frame_before = framing_errors("eof_in_frame")
        lock = await TableLock.acquire(database_url)
        try:
            peer = await Peer.open(listener.endpoints.mllp_port)
            peer.send(*feed)
            peer.writer.write_eof()  # done sending; still reading
            await asyncio.sleep(0.3)  # the EOF reaches the server while the frames are at the store
        finally:
            await lock.release()
        acks = await peer.acks(5)
        await peer.closed_by_server()
        await peer.close()
        assert framing_errors("eof_in_frame") == eof_in_frame_before
    assert [msa_control_id(a) for a in acks] == [control_id(m) for m in feed]
    assert all(ack_code(a) in ACCEPTED for a in acks)
    assert sorted(await stored_control_ids(database_url)) == sorted(control_id(m) for m in feed)


# --- 6. mutual TLS ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pki(tmp_path_factory.mktemp("mllp-pki"))


async def test_mutual_tls_names_the_sender_and_refuses_unknown_or_missing_certificates(
    start_listener: StartListener, database_url: str, pki: Path, tmp_path: Path
) -> None:
    senders = tmp_path / "senders.yaml"
    senders.write_text(
        "senders:\n"
        "  - name: county-general\n"
        "    facilities: [COUNTYGEN]\n"
        f"    tls_client_cn: {KNOWN_CN}\n"
        "    validation: off\n"
        "  - name: st-mary\n"
        "    facilities: [STMARY]\n"
    )
    feed = synthetic_feed(40, seed=306)
    mine = next(m for m in feed if b"|COUNTYGEN|" in m.split(b"\r")[0])
    not_mine = next(m for m in feed if b"|STMARY|" in m.split(b"\r")[0])
    settings = {
        "tls_cert_file": pki / "server.pem",
        "tls_key_file": pki / "server.key",
        "tls_client_ca_file": pki / "ca.pem",
        "senders_file": senders,
    }
    async with start_listener(**settings) as listener:
        port = listener.endpoints.mllp_port
        unknown_before = tls_refused("unknown_cn")
        base = open_connections()

        # The registered certificate: its own facility accepted, another sender's rejected.
        known = await Peer.open(port, tls=client_tls(pki, "known"))
        known.send(mine, not_mine)
        ok, foreign = await known.acks(2)
        assert msa_control_id(ok) == control_id(mine) and ack_code(ok) in ACCEPTED
        assert msa_control_id(foreign) == control_id(not_mine) and ack_code(foreign) in REJECTED
        assert any("MSH" in e for e in ack_fields(foreign)["ERR*"])
        assert open_connections() - base == 1
        await known.close()

        # Signed by the CA but named by no sender: closed right after the handshake.
        stranger = await Peer.open(port, tls=client_tls(pki, "unknown"))
        await stranger.closed_by_server(timeout_s=2)
        assert tls_refused("unknown_cn") - unknown_before == 1
        await stranger.close()

        # No certificate at all: the handshake fails. Under TLS 1.2 the client sees it in the
        # handshake itself; under TLS 1.3 the server's verdict comes after the client's
        # Finished, so the client only finds the connection ended, without an ACK.
        tls12 = client_tls(pki, None)
        tls12.maximum_version = ssl.TLSVersion.TLSv1_2
        with pytest.raises((ssl.SSLError, ConnectionError)):  # the alert, or the reset after it
            await Peer.open(port, tls=tls12)
        anonymous = await Peer.open(port, tls=client_tls(pki, None))
        anonymous.send(mine)
        with contextlib.suppress(ssl.SSLError, ConnectionError):
            await anonymous.closed_by_server(timeout_s=2)  # EOF, or the alert as an error
        await anonymous.close()
        assert tls_refused("unknown_cn") - unknown_before == 1
        await eventually(lambda: open_connections() == base, what="a connection was left open")

    rows = await db_fetch(database_url, "SELECT control_id, sender, ack_code FROM adt_message ORDER BY control_id")
    by_id = {r["control_id"]: (r["sender"], r["ack_code"]) for r in rows}
    assert by_id == {control_id(mine): ("county-general", "AA"), control_id(not_mine): ("county-general", "AR")}


# --- 7. graceful stop ---------------------------------------------------------------------------


async def test_stop_answers_frames_already_read_and_closes_idle_connections(
    start_listener: StartListener, database_url: str
) -> None:
    feed = synthetic_feed(20, seed=307)
    lock = await TableLock.acquire(database_url)
    try:
        async with start_listener() as listener:
            port = listener.endpoints.mllp_port
            idle = await Peer.open(port)
            busy = await Peer.open(port)
            # Two bursts: the first is handed to the store (and waits for the lock), the second
            # waits behind it at the server, to be handed over only after the first's ACKs.
            busy.send(*feed[:10])
            await asyncio.sleep(0.2)
            busy.send(*feed[10:])
            await asyncio.sleep(0.2)

            async def answers() -> list[bytes]:
                acks = await busy.acks(len(feed), timeout_s=15)
                await busy.closed_by_server(timeout_s=5)
                return acks

            async def release_once_stopping() -> None:
                await eventually(lambda: listener.mllp.closing, timeout_s=10, what="stop did not begin")
                # Stopping, frames in flight: the idle connection goes at once, the busy one stays.
                await idle.closed_by_server(timeout_s=2)
                assert not busy.reader.at_eof()
                await asyncio.sleep(0.2)
                await lock.release()

            reading = asyncio.create_task(answers())
            releasing = asyncio.create_task(release_once_stopping())
        # The listener has stopped: what it had read was answered before it closed.
        await asyncio.wait_for(releasing, 5)
        acks = await asyncio.wait_for(reading, 5)
        await idle.close()
        await busy.close()
    finally:
        await lock.release()
    assert [msa_control_id(a) for a in acks] == [control_id(m) for m in feed]
    assert all(ack_code(a) in ACCEPTED for a in acks)
    assert sorted(await stored_control_ids(database_url)) == sorted(control_id(m) for m in feed)


# --- a sender that stops reading its ACKs -------------------------------------------------------


def with_long_header(message: bytes) -> bytes:
    """The message with MSH-3..6 and MSH-10 at 199 characters, which its ACK echoes: ACKs of
    ~1.1 kB, so a few thousand fill the socket buffers."""
    fields = message.split(b"|", 10)
    fields[2], fields[3], fields[4], fields[5] = b"A" * 199, b"F" * 199, b"W" * 199, b"L" * 199
    fields[9] = fields[9].ljust(199, b"X")
    return b"|".join(fields)


async def test_sender_that_never_reads_its_acks_does_not_pin_a_slot_forever(start_listener: StartListener) -> None:
    feed = [with_long_header(m) for m in synthetic_feed(15_000, seed=308)]
    # The sender and the listener share this process's event loop: the listener's own work on
    # a batch (parsing hundreds of frames) delays reading the rest of a frame, and on a loaded
    # machine more than 0.3 s of it was taken for a slow sender (read_timeout, in 4 of about
    # 10 runs). 2 s keep that out; the idle timeout is not what is tested.
    async with start_listener(mllp_idle_timeout_s=30, mllp_read_timeout_s=2.0, mllp_max_connections=1) as listener:
        port = listener.endpoints.mllp_port
        base, aborted = open_connections(), framing_errors("write_timeout")
        others = {reason: framing_errors(reason) for reason in ("idle_timeout", "read_timeout")}  # for the message
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window: fewer ACKs fill it
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(sock=sock)
        deaf = Peer(reader, writer)
        try:
            # Keep writing and never read: the unread ACKs fill the socket buffers, the
            # server's writes pause, and read_timeout_s later it must drop us.
            started = asyncio.get_running_loop().time()
            sent = 0
            while not writer.transport.is_closing() and asyncio.get_running_loop().time() - started < 20:
                if writer.transport.get_write_buffer_size() < 1_000_000 and sent < len(feed):
                    deaf.send(*feed[sent : sent + 500])
                    sent += 500
                await asyncio.sleep(0.1)
                if reader.at_eof() or reader.exception() is not None:
                    break
            closed_otherwise = {reason: framing_errors(reason) - n for reason, n in others.items()}
            assert framing_errors("write_timeout") - aborted == 1, f"the deaf sender was not dropped ({sent=}, " \
                f"{closed_otherwise=})"
            await eventually(lambda: open_connections() - base == 0, what="the deaf sender's slot is free")
        finally:
            writer.transport.abort()  # else the listener's stop waits its grace period for it
        other = await Peer.open(port)
        other.send(feed[-1])
        [ack] = await other.acks(1, timeout_s=5)
        assert msa_control_id(ack) == control_id(feed[-1])
        await other.close()
