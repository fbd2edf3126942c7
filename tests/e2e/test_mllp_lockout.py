"""No one can lock the hospitals out: 500 idle connections against a real listener
(PostgreSQL, broker), and a known sender still gets in and gets its AA.

Addresses: the listener listens on 127.0.0.1; the flood comes from 127.0.0.1, the
sender known by address (senders file `addresses:`) from 127.0.0.2, an unknown sender
from 127.0.0.3 (Linux routes all of 127/8 to lo). Timeouts are set long wherever a
test must not pass because a timeout freed slots: only admission explains the result.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.synthetic import synthetic_feed
from tests.e2e.conftest import StartListener
from tests.e2e.helpers import ack_code, control_id, eventually, msa_control_id
from tests.e2e.mllp_client import (
    Peer,
    close_all,
    ensure_fd_limit,
    evicted,
    framing_errors,
    idle_sockets,
    open_connections,
    refused,
)
from tests.e2e.pki import KNOWN_CN, client_tls, make_pki

FLOOD = 500
KNOWN_ADDRESS = "127.0.0.2"
OTHER_ADDRESS = "127.0.0.3"
# Long enough that no timeout frees a slot during a test.
NO_TIMEOUTS = {"mllp_first_frame_timeout_s": 120.0, "mllp_idle_timeout_s": 300.0, "mllp_read_timeout_s": 60.0}


@pytest.fixture(autouse=True)
def enough_files() -> None:
    ensure_fd_limit(4 * FLOOD)  # both ends of each connection, and the rest of the process


@pytest.fixture
def senders_file(tmp_path: Path) -> Path:
    path = tmp_path / "senders.yaml"
    path.write_text(
        "senders:\n"
        "  - name: county-general\n"
        "    facilities: [COUNTYGEN]\n"
        f"    addresses: [{KNOWN_ADDRESS}]\n"
        f"    tls_client_cn: {KNOWN_CN}\n"
        "    validation: off\n"
        "  - name: st-mary\n"
        "    facilities: [STMARY]\n"
        "    validation: off\n"
    )
    return path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pki(tmp_path_factory.mktemp("lockout-pki"))


def original_mode(message: bytes) -> bytes:
    """The message without MSH-15/16, so the answer is the application ACK (AA), not CA."""
    msh, rest = message.split(b"\r", 1)
    fields = msh.split(b"|")
    fields[14:16] = [b"", b""]
    return b"|".join(fields) + b"\r" + rest


def messages(facility: str, n: int, seed: int) -> Iterator[bytes]:
    return iter([original_mode(m) for m in synthetic_feed(n, seed=seed, facilities=(facility,))])


async def answered(peer: Peer, message: bytes) -> str:
    """Send one message; its ACK code (the ACK must answer that message)."""
    peer.send(message)
    [ack] = await peer.acks(1, timeout_s=5)
    assert msa_control_id(ack) == control_id(message)
    return ack_code(ack)


async def test_500_idle_connections_from_one_address_leave_room_for_everyone_else(
    start_listener: StartListener, senders_file: Path
) -> None:
    """Defaults: 256 slots, 32 per unknown address, 32 reserved for known senders."""
    county = messages("COUNTYGEN", 2, seed=401)
    st_mary = messages("STMARY", 1, seed=402)
    async with start_listener(senders_file=senders_file, **NO_TIMEOUTS) as listener:
        port = listener.endpoints.mllp_port
        base, per_address = open_connections(), refused("per_address")
        flood = await idle_sockets(port, FLOOD)
        try:
            await eventually(lambda: refused("per_address") - per_address == FLOOD - 32, timeout_s=20,
                             what="the flood beyond 32 connections was not refused")
            assert open_connections() - base == 32

            known = await Peer.open(port, source=KNOWN_ADDRESS)
            assert await answered(known, next(county)) == "AA"
            stranger = await Peer.open(port, source=OTHER_ADDRESS)  # unknown, but not the flooder
            assert await answered(stranger, next(st_mary)) == "AA"
            assert await answered(known, next(county)) == "AA"  # and it stays
            assert open_connections() - base == 34
            await known.close()
            await stranger.close()
        finally:
            close_all(flood)


async def test_500_idle_connections_without_a_per_address_limit_still_leave_a_known_sender_its_slot(
    start_listener: StartListener, senders_file: Path
) -> None:
    """No per-address limit (a flood from many addresses looks like this): the unknown
    connections fill their 224 slots, every later one evicts the oldest that never sent,
    and the 32 reserved slots stay free for known senders."""
    county = messages("COUNTYGEN", 2, seed=403)
    st_mary = messages("STMARY", 1, seed=404)
    async with start_listener(
        senders_file=senders_file, mllp_max_connections_per_address=0, **NO_TIMEOUTS
    ) as listener:
        port = listener.endpoints.mllp_port
        base, never_sent = open_connections(), evicted("never_sent")
        full = refused("max_connections")
        flood = await idle_sockets(port, FLOOD)
        try:
            unknown_slots = 256 - 32
            await eventually(lambda: evicted("never_sent") - never_sent == FLOOD - unknown_slots, timeout_s=20,
                             what="the flood did not evict its own idle connections")
            assert open_connections() - base == unknown_slots

            # A known sender: a reserved slot, no eviction needed, AA at once.
            known = await Peer.open(port, source=KNOWN_ADDRESS)
            assert await answered(known, next(county)) == "AA"
            assert evicted("never_sent") - never_sent == FLOOD - unknown_slots
            # An unknown sender that sends: it takes the place of one that never did.
            stranger = await Peer.open(port, source=OTHER_ADDRESS)
            assert await answered(stranger, next(st_mary)) == "AA"
            assert evicted("never_sent") - never_sent == FLOOD - unknown_slots + 1
            assert await answered(known, next(county)) == "AA"
            assert refused("max_connections") == full  # nobody was turned away
            await known.close()
            await stranger.close()
        finally:
            close_all(flood)


async def test_500_idle_connections_on_the_tls_port_and_a_sender_known_by_its_certificate_gets_in(
    start_listener: StartListener, senders_file: Path, pki: Path
) -> None:
    """Mutual TLS: the certificate names the sender only after the handshake, so on
    accept it is one more unknown connection; it takes the place of one that never sent,
    from the flood's own address."""
    county = messages("COUNTYGEN", 1, seed=405)
    tls_settings = {
        "tls_cert_file": pki / "server.pem",
        "tls_key_file": pki / "server.key",
        "tls_client_ca_file": pki / "ca.pem",
    }
    async with start_listener(
        senders_file=senders_file, mllp_max_connections_per_address=0, **NO_TIMEOUTS, **tls_settings
    ) as listener:
        port = listener.endpoints.mllp_port
        base, never_sent = open_connections(), evicted("never_sent")
        flood = await idle_sockets(port, FLOOD)  # plain TCP, stuck before the handshake
        try:
            await eventually(lambda: evicted("never_sent") - never_sent == FLOOD - 224, timeout_s=20,
                             what="the flood did not evict its own idle connections")
            known = await Peer.open(port, tls=client_tls(pki, "known"))
            assert await answered(known, next(county)) == "AA"
            assert evicted("never_sent") - never_sent == FLOOD - 224 + 1
            assert open_connections() - base == 224  # it left the unknown pool for the reserved one
            await known.close()
        finally:
            close_all(flood)


async def test_first_frame_deadline_closes_a_silent_newcomer_but_not_one_that_sent_nor_a_known_sender(
    start_listener: StartListener, senders_file: Path
) -> None:
    county = messages("COUNTYGEN", 1, seed=406)
    st_mary = messages("STMARY", 2, seed=407)
    deadline = 0.3
    async with start_listener(
        senders_file=senders_file, mllp_first_frame_timeout_s=deadline, mllp_idle_timeout_s=60
    ) as listener:
        port = listener.endpoints.mllp_port
        before = framing_errors("first_frame_timeout")
        loop = asyncio.get_running_loop()
        opened = loop.time()
        silent = await Peer.open(port)
        prompt = await Peer.open(port, source=OTHER_ADDRESS)
        assert await answered(prompt, next(st_mary)) == "AA"
        known_silent = await Peer.open(port, source=KNOWN_ADDRESS)

        await silent.closed_by_server(timeout_s=5)
        assert framing_errors("first_frame_timeout") - before == 1
        # Let four deadlines pass: the other two are past it, and still open.
        await asyncio.sleep(max(0.0, opened + 4 * deadline - loop.time()))
        assert await answered(prompt, next(st_mary)) == "AA"
        assert await answered(known_silent, next(county)) == "AA"
        assert framing_errors("first_frame_timeout") - before == 1
        for peer in (silent, prompt, known_silent):
            await peer.close()


async def test_per_address_limit_refuses_the_extra_connection_of_an_unknown_address_only(
    start_listener: StartListener, senders_file: Path
) -> None:
    st_mary = messages("STMARY", 6, seed=408)
    county = messages("COUNTYGEN", 5, seed=409)
    async with start_listener(senders_file=senders_file, mllp_max_connections_per_address=3, **NO_TIMEOUTS) as listener:
        port = listener.endpoints.mllp_port
        before = refused("per_address")
        three = [await Peer.open(port) for _ in range(3)]
        for peer in three:
            assert await answered(peer, next(st_mary)) == "AA"
        fourth = await Peer.open(port)
        await fourth.closed_by_server()
        assert refused("per_address") - before == 1

        # Another unknown address has its own allowance; the known address has no limit.
        other = await Peer.open(port, source=OTHER_ADDRESS)
        assert await answered(other, next(st_mary)) == "AA"
        known = [await Peer.open(port, source=KNOWN_ADDRESS) for _ in range(5)]
        for peer in known:
            assert await answered(peer, next(county)) == "AA"
        assert refused("per_address") - before == 1

        # One of the three leaves: its address may connect again.
        await three[0].close()
        await eventually(lambda: sum(c.address == "127.0.0.1" for c in listener.mllp._connections) == 2,
                         what="the server did not notice the close")
        again = await Peer.open(port)
        assert await answered(again, next(st_mary)) == "AA"
        assert refused("per_address") - before == 1
        for peer in (*three, fourth, other, *known, again):
            await peer.close()
