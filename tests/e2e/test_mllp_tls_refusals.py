"""Every refused TLS connection is logged (peer address, reason, certificate subject and
expiry when the client sent one) and counted in wpc_mllp_tls_refused_total{reason}.

A real listener with mutual TLS (certificates made with openssl, tests/e2e/pki.py);
each case connects from a loopback address of its own, so its log line can be told
from the others' by the peer address.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import warnings
from pathlib import Path

import pytest

from adt_listener import tls
from adt_listener.mllp import encode
from bench.synthetic import synthetic_feed
from tests.e2e.conftest import StartListener
from tests.e2e.helpers import control_id, eventually, msa_control_id
from tests.e2e.mllp_client import Peer, open_connections, tls_refused
from tests.e2e.pki import EXPIRED_CN, FOREIGN_CN, KNOWN_CN, UNKNOWN_CN, client_tls, make_pki, not_after

MESSAGE = synthetic_feed(1, seed=501, facilities=("COUNTYGEN",))[0]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pki(tmp_path_factory.mktemp("tls-refusals-pki"))


@pytest.fixture
def tls_settings(pki: Path, tmp_path: Path) -> dict[str, object]:
    senders = tmp_path / "senders.yaml"
    senders.write_text(
        "senders:\n  - name: county-general\n    facilities: [COUNTYGEN]\n"
        f"    tls_client_cn: {KNOWN_CN}\n    validation: off\n"
    )
    return {
        "tls_cert_file": pki / "server.pem",
        "tls_key_file": pki / "server.key",
        "tls_client_ca_file": pki / "ca.pem",
        "senders_file": senders,
        "mllp_first_frame_timeout_s": 0.5,  # the handshake deadline of an unknown peer
    }


async def attempt(port: int, context: ssl.SSLContext | None, source: str) -> bytes:
    """Connect from ``source``, send a message, read what comes back until the server
    ends the connection; the bytes read (an ACK would be a failure of the test)."""
    received = b""
    with contextlib.suppress(ssl.SSLError, ConnectionError):
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, ssl=context, local_addr=(source, 0)), 5
        )
        try:
            writer.write(encode(MESSAGE))
            async with asyncio.timeout(5):
                while chunk := await reader.read(65_536):
                    received += chunk
        finally:
            writer.close()
            with contextlib.suppress(ssl.SSLError, ConnectionError):
                await writer.wait_closed()
    return received


def tls11_client(pki: Path) -> ssl.SSLContext:
    """A client that offers only TLS 1.1 (Python deprecates even asking for it)."""
    context = client_tls(pki, "known")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = ssl.TLSVersion.TLSv1_1
        context.maximum_version = ssl.TLSVersion.TLSv1_1
    context.set_ciphers("DEFAULT:@SECLEVEL=0")  # OpenSSL 3 refuses TLS 1.1 ciphers at the default level
    return context


def refusal_line(caplog: pytest.LogCaptureFixture, source: str) -> str:
    lines = [r.getMessage() for r in caplog.records
             if r.name == "adt_listener.server" and f"peer {source}:" in r.getMessage()]
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize(
    ("case", "reason", "certificate"),
    [
        ("no certificate", "no_client_cert", None),
        ("another CA's certificate", "unknown_ca", "foreign"),
        ("an expired certificate", "expired", "expired"),
        ("TLS 1.1 only", "protocol_version", None),
        ("plain TCP on the TLS port", "not_tls", None),
        ("nothing at all", "handshake_timeout", None),
        ("a certificate no sender has", "unknown_cn", "unknown"),
    ],
)
async def test_each_tls_refusal_is_logged_and_counted_by_reason(
    start_listener: StartListener, tls_settings: dict[str, object], pki: Path,
    caplog: pytest.LogCaptureFixture, case: str, reason: str, certificate: str | None,
) -> None:
    source = f"127.0.0.{11 + tls.REASONS.index(reason)}"
    caplog.set_level(logging.INFO, logger="adt_listener.server")
    async with start_listener(**tls_settings) as listener:
        port = listener.endpoints.mllp_port
        base, before = open_connections(), {r: tls_refused(r) for r in tls.REASONS}
        if reason == "protocol_version":
            received = await attempt(port, tls11_client(pki), source)
        elif reason == "not_tls":
            received = await attempt(port, None, source)
        elif reason == "handshake_timeout":
            reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
            received = await asyncio.wait_for(reader.read(), 5)  # the server gives up: EOF
            writer.close()
        else:
            received = await attempt(port, client_tls(pki, certificate), source)
        assert b"MSA" not in received, f"{case}: the message was answered"

        await eventually(lambda: tls_refused(reason) - before[reason] == 1, what=f"{case}: not counted as {reason}")
        assert all(tls_refused(r) == before[r] for r in tls.REASONS if r != reason), f"{case}: counted twice"
        line = refusal_line(caplog, source)
        assert f"reason {reason}" in line
        if certificate is not None:
            cn = {"foreign": FOREIGN_CN, "expired": EXPIRED_CN, "unknown": UNKNOWN_CN}[certificate]
            assert f"subject 'O=Test County,CN={cn}'" in line
            assert f"expires {not_after(pki, certificate)}" in line
        else:
            assert "no client certificate seen" in line
        assert "MSH" not in line and "COUNTYGEN" not in line  # nothing of the message
        await eventually(lambda: open_connections() == base, what="a refused connection kept its slot")


async def test_the_known_certificate_still_gets_in_and_the_minimum_is_tls_1_2(
    start_listener: StartListener, tls_settings: dict[str, object], pki: Path
) -> None:
    context = tls.server_context(pki / "server.pem", pki / "server.key", pki / "ca.pem")
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    async with start_listener(**tls_settings) as listener:
        before = {r: tls_refused(r) for r in tls.REASONS}
        known = await Peer.open(listener.endpoints.mllp_port, tls=client_tls(pki, "known"), source="127.0.0.20")
        known.send(MESSAGE)
        [ack] = await known.acks(1)
        assert msa_control_id(ack) == control_id(MESSAGE)
        await known.close()
        assert {r: tls_refused(r) for r in tls.REASONS} == before
