"""`wpc send` and `MllpClient` against a small MLLP server run by the test itself.

The server runs in a thread with its own event loop, so the synchronous command
(`sender.run`, which calls `asyncio.run`) and the async client tests share it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from adt_listener.er7 import split_messages
from adt_listener.mllp import Frame, MllpFramer, encode
from wpc.tools import send as sender
from wpc.tools.send import MllpClient, MllpPeerError

Reply = bytes | list[bytes] | None  # raw bytes to write back (a list: written piece by piece)


def msh10(message: bytes) -> bytes:
    first = message.split(b"\r", 1)[0]
    fields = first.split(first[3:4])
    return fields[9] if len(fields) > 9 else b""


def ack(message: bytes, code: bytes = b"AA", extra: bytes = b"") -> bytes:
    control_id = msh10(message)
    return (
        b"MSH|^~\\&|WPC|WPC|SND|FAC|20240101000000||ACK^A01^ACK|ACK" + control_id + b"|P|2.5\r"
        b"MSA|" + code + b"|" + control_id + b"\r" + extra
    )


def message(
    control_id: str, *, msh15: str = "", pid: str = "PID|1||MRN1^^^H^MR||DOE^JANE||19800101|F"
) -> bytes:
    return (
        f"MSH|^~\\&|SND|FAC|WPC|WPC|20240101000000||ADT^A01^ADT_A01|{control_id}|P|2.5|||{msh15}\r"
        f"EVN|A01|20240101000000\r{pid}\r"
    ).encode()


def aa(payload: bytes) -> Reply:
    return encode(ack(payload))


class MllpServer:
    """An MLLP server on a free loopback port; ``reply(payload)`` decides what is written back."""

    def __init__(
        self, reply: Callable[[bytes], Reply] = aa, *, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        self.reply = reply
        self.received: list[bytes] = []
        self.connections = 0
        self.peer_certs: list[object] = []
        self._ssl = ssl_context
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    def __enter__(self) -> MllpServer:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self._ssl), self._loop
        ).result(5)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc_info: object) -> None:
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    async def _shutdown(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        await self._server.wait_closed()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        if self._ssl is not None:
            self.peer_certs.append(writer.get_extra_info("peercert"))
        framer = MllpFramer()
        try:
            while data := await reader.read(65_536):
                for event in framer.feed(data):
                    if not isinstance(event, Frame):
                        continue
                    self.received.append(event.payload)
                    out = self.reply(event.payload)
                    if out is None:
                        continue
                    if out == b"CLOSE":
                        return
                    for piece in out if isinstance(out, list) else [out]:
                        writer.write(piece)
                        await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, ssl.SSLError):
                pass


@pytest.fixture
def server() -> Iterator[MllpServer]:
    with MllpServer() as s:
        yield s


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- split_messages ---------------------------------------------------------------------------


def test_each_sample_file_is_one_message_kept_byte_for_byte(samples_dir: Path) -> None:
    files = sorted((samples_dir / "messages").glob("*.hl7"))
    assert len(files) == 92
    for path in files:
        data = path.read_bytes().removeprefix(b"\xef\xbb\xbf")
        # The samples end segments with CR. What changes: a missing final terminator is
        # added, and an empty segment (092 has one) is dropped.
        expected = b"".join(segment + b"\r" for segment in data.split(b"\r") if segment)
        assert split_messages(path.read_bytes()) == [expected], path.name


def test_sample_files_joined_like_cat_split_back(samples_dir: Path) -> None:
    files = sorted((samples_dir / "messages").glob("*.hl7"))
    joined = b"\n".join(p.read_bytes() for p in files)  # BOMs of later files land mid-stream
    assert split_messages(joined) == [m for p in files for m in split_messages(p.read_bytes())]


def test_batch_file_with_envelope_and_mixed_line_ends() -> None:
    blob = (
        b"\xef\xbb\xbfFHS|^~\\&|SND|FAC|||20240101\r\n"
        b"BHS|^~\\&|SND|FAC|||20240101\r\n"
        b"MSH|^~\\&|SND|FAC|WPC|WPC|20240101||ADT^A01|M1|P|2.5\r\n"
        b"PID|1||MRN1||M\xfcller^J\xe9r\xf4me\r\n"  # latin-1 bytes: not decoded, kept
        b"\r\n"
        b"MSH|^~\\&|SND|FAC|WPC|WPC|20240101||ADT^A02|M2|P|2.5\n"
        b"PID|1||MRN2\n"
        b"   \n"
        b"MSH|^~\\&|SND|FAC|WPC|WPC|20240101||ADT^A03|M3|P|2.5\r"
        b"PV1|1|I|W^1^1 \r"  # a trailing blank inside a segment is data: kept
        b"BTS|3\r\n"
        b"FTS|1\r\n"
    )
    assert split_messages(blob) == [
        b"MSH|^~\\&|SND|FAC|WPC|WPC|20240101||ADT^A01|M1|P|2.5\rPID|1||MRN1||M\xfcller^J\xe9r\xf4me\r",
        b"MSH|^~\\&|SND|FAC|WPC|WPC|20240101||ADT^A02|M2|P|2.5\rPID|1||MRN2\r",
        b"MSH|^~\\&|SND|FAC|WPC|WPC|20240101||ADT^A03|M3|P|2.5\rPV1|1|I|W^1^1 \r",
    ]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", []),
        (b"\r\n \n\t\r", []),
        (b"\xef\xbb\xbf", []),
        (b"PID|1||X\rMSH|^~\\&|A\r", [b"PID|1||X\r", b"MSH|^~\\&|A\r"]),  # left for the receiver to reject
        (b"MSH|^~\\&|A\rMSHX|1\r", [b"MSH|^~\\&|A\rMSHX|1\r"]),  # MSHX is not MSH
        (b"MSH^~\\&|A\rEVN^A01", [b"MSH^~\\&|A\rEVN^A01\r"]),  # any field separator
    ],
)
def test_split_edge_cases(data: bytes, expected: list[bytes]) -> None:
    assert split_messages(data) == expected


# --- MllpClient --------------------------------------------------------------------------------


async def test_send_returns_the_ack(server: MllpServer) -> None:
    async with await MllpClient.connect("127.0.0.1", server.port) as client:
        reply = await client.send(message("C1"), timeout=5)
    assert reply == ack(message("C1"))
    assert server.received == [message("C1")]


async def test_ack_arriving_byte_by_byte_is_reassembled() -> None:
    with MllpServer(lambda p: [bytes([b]) for b in b"\r\n" + encode(ack(p))]) as server:
        async with await MllpClient.connect("127.0.0.1", server.port) as client:
            assert await client.send(message("C1"), timeout=5) == ack(message("C1"))
            assert await client.send(message("C2"), timeout=5) == ack(message("C2"))


async def test_send_many_pipelines_and_keeps_order(server: MllpServer) -> None:
    messages = [message(f"C{i:04d}") for i in range(300)]
    async with await MllpClient.connect("127.0.0.1", server.port) as client:
        acks = await client.send_many(messages, timeout=5)
    assert acks == [ack(m) for m in messages]
    assert server.received == messages


async def test_send_many_does_not_deadlock_on_large_volume() -> None:
    # ~16 MB each way: far more than both socket buffers, so the client must read
    # ACKs while it is still writing.
    padding = b"NTE|1||" + b"x" * 8_000 + b"\r"
    with MllpServer(lambda p: encode(ack(p, extra=padding))) as server:
        messages = [message(f"C{i:05d}") + padding for i in range(2_000)]
        async with await MllpClient.connect("127.0.0.1", server.port) as client:
            acks = await client.send_many(messages, timeout=10)
    assert [msh10(a) for a in acks] == [b"ACK" + msh10(m) for m in messages]


async def test_timeout_retires_the_connection() -> None:
    with MllpServer(lambda p: None) as server:
        async with await MllpClient.connect("127.0.0.1", server.port) as client:
            with pytest.raises(TimeoutError):
                await client.send(message("C1"), timeout=0.2)
            with pytest.raises(ConnectionError, match="no longer usable"):
                await client.send(message("C2"), timeout=0.2)


async def test_peer_closing_is_a_connection_error() -> None:
    with MllpServer(lambda p: b"CLOSE") as server:
        async with await MllpClient.connect("127.0.0.1", server.port) as client:
            with pytest.raises(ConnectionError):
                await client.send(message("C1"), timeout=5)


async def test_peer_speaking_another_protocol_is_a_peer_error() -> None:
    with MllpServer(lambda p: b"HTTP/1.1 400 Bad Request\r\n\r\n") as server:
        async with await MllpClient.connect("127.0.0.1", server.port) as client:
            with pytest.raises(MllpPeerError, match="outside MLLP framing"):
                await client.send(message("C1"), timeout=5)


async def test_connect_refused_is_an_os_error() -> None:
    with pytest.raises(OSError):
        await MllpClient.connect("127.0.0.1", free_port())


async def test_message_with_a_block_byte_is_refused_before_writing(server: MllpServer) -> None:
    async with await MllpClient.connect("127.0.0.1", server.port) as client:
        with pytest.raises(ValueError, match="0x0B"):
            await client.send(b"MSH|^~\\&|\x0b\r", timeout=5)
        assert await client.send(message("C1"), timeout=5) == ack(message("C1"))


# --- wpc send ----------------------------------------------------------------------------------


def wpc_send(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="wpc send")
    sender.add_arguments(parser)
    return sender.run(parser.parse_args(argv))


def write(tmp_path: Path, name: str, *messages: bytes, sep: bytes = b"\r\n") -> Path:
    path = tmp_path / name
    path.write_bytes(sep.join(messages))
    return path


def test_all_accepted_exits_0_and_prints_ids_not_phi(
    server: MllpServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    batch = write(tmp_path, "batch.hl7", b"BHS|^~\\&|SND", message("B1"), message("B2"), b"BTS|2")
    single = write(tmp_path, "one.hl7", message("S1"))
    assert wpc_send(["--port", str(server.port), str(batch), str(single)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [
        f"{batch}#1  B1  ->  AA",
        f"{batch}#2  B2  ->  AA",
        f"{single}  S1  ->  AA",
        "sent 3: AA 3, AE 0, AR 0, duplicates 0, no ACK expected 0, unanswered 0",
    ]
    assert server.received == [message("B1"), message("B2"), message("S1")]
    assert server.connections == 1


def test_rejection_exits_1_and_shows_err(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = b"ERR||PID^1^7^1|102^Data type error^HL70357|E||||Date of birth is not a date\r"

    def reply(payload: bytes) -> Reply:
        return encode(ack(payload, b"AE", err) if msh10(payload) == b"BAD" else ack(payload))

    files = [
        write(tmp_path, "a.hl7", message("OK1")),
        write(tmp_path, "b.hl7", message("BAD", pid="PID|1||X")),
    ]
    with MllpServer(reply) as server:
        assert wpc_send(["--port", str(server.port), *map(str, files)]) == 1
    out = capsys.readouterr().out
    assert (
        f"{files[1]}  BAD  ->  AE  ERR PID^1^7^1 102^Data type error^HL70357 Date of birth is not a date"
        in out
    )
    assert "DOE" not in out and "19800101" not in out


def test_ack_for_another_message_is_a_failure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with MllpServer(lambda p: encode(ack(message("OTHER")))) as server:
        assert wpc_send(["--port", str(server.port), str(write(tmp_path, "a.hl7", message("C1")))]) == 1
    assert "AA  (MSA-2 is OTHER, not this message's MSH-10)" in capsys.readouterr().out


@pytest.mark.parametrize("msh15", ["NE", "ER", "er"])
def test_a_message_acknowledged_on_error_only_is_not_awaited(
    msh15: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Enhanced mode (HL7 v2 chapter 2, 2.9.3): ER and NE get no ACK when the message is taken.
    def reply(payload: bytes) -> Reply:
        return None if f"|{msh15}\r".encode() in payload else encode(ack(payload))

    path = write(tmp_path, "er.hl7", message("N1", msh15=msh15), message("C2"))
    with MllpServer(reply) as server:
        # Without the grace, the first message would wait the whole --timeout and count unanswered.
        assert wpc_send(["--port", str(server.port), "--timeout", "20", "--grace", "0.2", str(path)]) == 0
        assert server.connections == 1
    assert capsys.readouterr().out.splitlines() == [
        f"{path}#1  N1  ->  sent, no ACK expected (MSH-15 = {msh15.upper()})",
        f"{path}#2  C2  ->  AA",
        "sent 2: AA 1, AE 0, AR 0, duplicates 0, no ACK expected 1, unanswered 0",
    ]


def test_an_error_ack_within_the_grace_is_shown_and_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = b"ERR||PID^1^3^1|101^Required field missing^HL70357|E\r"
    with MllpServer(lambda p: encode(ack(p, b"CE", err))) as server:
        path = write(tmp_path, "er.hl7", message("E1", msh15="ER"))
        assert wpc_send(["--port", str(server.port), "--grace", "5", str(path)]) == 1
    assert capsys.readouterr().out.splitlines() == [
        f"{path}  E1  ->  CE  ERR PID^1^3^1 101^Required field missing^HL70357",
        "sent 1: AA 0, AE 1, AR 0, duplicates 0, no ACK expected 0, unanswered 0",
    ]


def test_an_error_ack_after_the_grace_is_paired_by_control_id(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The receiver answers the ER message late, just before the next message's ACK.
    held: list[bytes] = []

    def reply(payload: bytes) -> Reply:
        if msh10(payload) == b"E1":
            held.append(payload)
            return None
        return [encode(ack(held[0], b"CR")), encode(ack(payload, b"CA"))]

    path = write(tmp_path, "er.hl7", message("E1", msh15="ER"), message("C2", msh15="AL"))
    with MllpServer(reply) as server:
        assert wpc_send(["--port", str(server.port), "--grace", "0.1", str(path)]) == 1
    assert capsys.readouterr().out.splitlines() == [
        f"{path}#1  E1  ->  sent, no ACK expected (MSH-15 = ER)",
        f"{path}#1  E1  ->  late answer: CR",
        f"{path}#2  C2  ->  CA",
        "sent 2: AA 1, AE 0, AR 1, duplicates 0, no ACK expected 0, unanswered 0",
    ]


def test_stored_ack_of_a_retransmission_is_marked_duplicate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    seen: set[bytes] = set()

    def reply(payload: bytes) -> Reply:
        first = payload not in seen
        seen.add(payload)
        text = b"" if first else b"|Retransmission: the stored acknowledgement of the first copy"
        return encode(ack(payload).rstrip(b"\r") + text + b"\r")

    path = write(tmp_path, "d.hl7", message("D1"), message("D1"), message("D2"))
    with MllpServer(reply) as server:
        assert wpc_send(["--port", str(server.port), str(path)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"{path}#1  D1  ->  AA",
        f"{path}#2  D1  ->  AA (duplicate: stored acknowledgement)",
        f"{path}#3  D2  ->  AA",
        "sent 3: AA 3, AE 0, AR 0, duplicates 1, no ACK expected 0, unanswered 0",
    ]


def test_su_message_without_ack_is_unanswered(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # SU: the receiver acknowledges success only, so silence is not success.
    with MllpServer(lambda p: None) as server:
        path = write(tmp_path, "su.hl7", message("S1", msh15="SU"))
        assert wpc_send(["--port", str(server.port), "--timeout", "0.3", str(path)]) == 1
    assert capsys.readouterr().out.splitlines() == [
        f"{path}  S1  ->  no ACK within 0.3 s (MSH-15 = SU: the receiver acknowledges success only)",
        "sent 1: AA 0, AE 0, AR 0, duplicates 0, no ACK expected 0, unanswered 1",
    ]


def test_control_id_compared_without_blanks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # A sample (088_santedb_A01) writes MSH-10 with a leading blank; receivers trim it.
    def reply(payload: bytes) -> Reply:
        return encode(ack(payload).replace(b"MSA|AA| X1", b"MSA|AA|X1"))

    path = write(tmp_path, "b.hl7", message(" X1"))
    with MllpServer(reply) as server:
        assert wpc_send(["--port", str(server.port), str(path)]) == 0
    assert capsys.readouterr().out.splitlines()[0] == f"{path}  X1  ->  AA"


def test_port_of_the_running_wpc_up(
    server: MllpServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in [n for n in os.environ if n.upper().startswith("WPC_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("WPC_DATA_DIR", str(tmp_path))
    (tmp_path / "run.json").write_text(json.dumps({"pid": os.getpid(), "ports": {"mllp": server.port}}))
    assert wpc_send([str(write(tmp_path, "a.hl7", message("C1")))]) == 0
    assert server.received == [message("C1")]
    assert f"running here (pid {os.getpid()}), MLLP port {server.port}" in capsys.readouterr().err


def test_ack_to_an_ne_message_is_skipped(
    server: MllpServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A receiver in original mode acknowledges every message, MSH-15 or not.
    path = write(tmp_path, "ne.hl7", message("N1", msh15="NE"), message("C2"))
    assert wpc_send(["--port", str(server.port), str(path)]) == 0
    assert capsys.readouterr().out.splitlines()[1] == f"{path}#2  C2  ->  AA"


def test_timeout_exits_1_and_goes_on_with_a_new_connection(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def reply(payload: bytes) -> Reply:
        return None if msh10(payload) == b"SLOW" else encode(ack(payload))

    path = write(tmp_path, "t.hl7", message("SLOW"), message("C2"))
    with MllpServer(reply) as server:
        assert wpc_send(["--port", str(server.port), "--timeout", "0.3", str(path)]) == 1
        assert server.connections == 2
    assert capsys.readouterr().out.splitlines() == [
        f"{path}#1  SLOW  ->  no ACK within 0.3 s",
        f"{path}#2  C2  ->  AA",
        "sent 2: AA 1, AE 0, AR 0, duplicates 0, no ACK expected 0, unanswered 1",
    ]


def test_lost_connection_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "a.hl7", message("C1"), message("C2"))
    with MllpServer(lambda p: b"CLOSE") as server:
        assert wpc_send(["--port", str(server.port), str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out.splitlines() == [
        f"{path}#1  C1  ->  connection lost",
        "sent 1: AA 0, AE 0, AR 0, duplicates 0, no ACK expected 0, unanswered 1",
    ]
    assert "1 message(s) not sent" in captured.err


def test_port_defaults_to_wpc_mllp_port(
    server: MllpServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WPC_MLLP_PORT", str(server.port))
    assert wpc_send([str(write(tmp_path, "a.hl7", message("C1")))]) == 0
    assert server.received == [message("C1")]


@pytest.mark.parametrize(
    ("make_args", "error"),
    [
        (lambda d: ["--port", str(free_port()), str(d / "ok.hl7")], "cannot connect"),
        (lambda d: [str(d / "missing.hl7")], "cannot read"),
        (lambda d: [str(d / "empty.hl7")], "no HL7 message"),
        (lambda d: ["--keyfile", "k.pem", str(d / "ok.hl7")], "--keyfile needs --certfile"),
        (lambda d: ["--cafile", str(d / "nope.pem"), str(d / "ok.hl7")], "TLS setup failed"),
        (lambda d: ["--timeout", "0", str(d / "ok.hl7")], "--timeout must be positive"),
        (lambda d: [str(d / "vt.hl7")], "0x0B or 0x1C"),
    ],
    ids=[
        "refused",
        "missing file",
        "empty file",
        "key without cert",
        "missing CA",
        "zero timeout",
        "block byte",
    ],
)
def test_usage_and_connection_errors_exit_2(
    make_args: Callable[[Path], list[str]], error: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write(tmp_path, "ok.hl7", message("C1"))
    write(tmp_path, "empty.hl7", b"\r\n")
    write(tmp_path, "vt.hl7", message("C1") + b"NTE|1||\x0b\r")
    assert wpc_send(make_args(tmp_path)) == 2
    captured = capsys.readouterr()
    assert error in captured.err and captured.err.startswith("wpc send: error: ")
    assert captured.out == ""


# --- mutual TLS --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, made with openssl."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    d = tmp_path_factory.mktemp("pki")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "1",
        "-subj",
        "/CN=test-ca",
    )
    (d / "server.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    for name in ("server", "client"):
        openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            "-subj",
            f"/CN=test-{name}",
        )
        extra = ["-extfile", "server.ext"] if name == "server" else []
        openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            f"{name}.pem",
            "-days",
            "1",
            *extra,
        )
    return d


def server_tls(pki: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=pki / "ca.pem")
    context.load_cert_chain(pki / "server.pem", pki / "server.key")
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def test_mutual_tls(pki: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "a.hl7", message("C1"))
    with MllpServer(ssl_context=server_tls(pki)) as server:
        args = [
            "--port",
            str(server.port),
            "--cafile",
            str(pki / "ca.pem"),
            "--certfile",
            str(pki / "client.pem"),
            "--keyfile",
            str(pki / "client.key"),
            str(path),
        ]
        assert wpc_send(args) == 0
        assert server.received == [message("C1")]
    assert capsys.readouterr().out.splitlines()[0] == f"{path}  C1  ->  AA"
    [cert] = server.peer_certs
    assert isinstance(cert, dict) and (("commonName", "test-client"),) in cert["subject"]


def test_tls_without_client_certificate_is_refused(
    pki: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, "a.hl7", message("C1"))
    with MllpServer(ssl_context=server_tls(pki)) as server:
        status = wpc_send(["--port", str(server.port), "--tls", "--cafile", str(pki / "ca.pem"), str(path)])
        assert server.received == []
    # TLS 1.3 reports the missing client certificate after the handshake, at the first read.
    assert status == 2
    assert "wpc send: error: " in capsys.readouterr().err
