"""The listener driven like a hospital would: MLLP and HTTP over real sockets.

Each test runs a listener against its own PostgreSQL database and its own topics on the
real broker, and checks ACKs, rows in PostgreSQL and records on Kafka.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import json
import uuid
from pathlib import Path

import httpx

from adt_listener.ack import mark_retransmission
from adt_listener.mllp import encode
from bench.synthetic import synthetic_feed
from schemas.adt_deadletter import AdtDeadLetterV1
from tests.conftest import Broker
from tests.e2e.conftest import StartListener
from tests.e2e.helpers import ack_code, ack_fields, control_id, db_fetch, msa_control_id, wait_outbox_empty
from tests.kafka_util import read_topic
from wpc.tools.send import MllpClient


async def send_over(port: int, messages: list[bytes]) -> list[bytes]:
    client = await MllpClient.connect("127.0.0.1", port)
    try:
        return [await client.send(m, timeout=15) for m in messages]
    finally:
        await client.close()


async def test_multi_hospital_feed_is_acked_stored_and_published_once(
    start_listener: StartListener, database_url: str, broker: Broker, topics: dict[str, str]
) -> None:
    feed = synthetic_feed(320, seed=11)
    async with start_listener() as listener:
        port = listener.endpoints.mllp_port
        # 16 connections at once, like 16 interface-engine channels.
        chunks = [feed[i::16] for i in range(16)]
        acks = await asyncio.gather(*(send_over(port, chunk) for chunk in chunks))
        for chunk, chunk_acks in zip(chunks, acks, strict=True):
            for message, ack in zip(chunk, chunk_acks, strict=True):
                assert ack_code(ack) in ("AA", "CA")
                assert msa_control_id(ack) == control_id(message)
        await wait_outbox_empty(database_url)

    rows = await db_fetch(database_url, "SELECT control_id, ack_code, raw FROM adt_message")
    assert len(rows) == len(feed)
    assert {r["control_id"] for r in rows} == {control_id(m) for m in feed}
    assert {bytes(r["raw"]) for r in rows} == set(feed)  # stored byte for byte

    records = await read_topic(broker.bootstrap, topics["adt_events"], expect=len(feed))
    events = [json.loads(r.value) for r in records]
    assert sorted(e["control_id"] for e in events) == sorted(control_id(m) for m in feed)  # each once
    assert len({e["event_id"] for e in events}) == len(feed)
    # Keyed by patient, and in order per patient (a patient's events keep the feed's order).
    position = {control_id(m): n for n, m in enumerate(feed)}
    per_key: dict[bytes, list[int]] = {}
    for r, e in zip(records, events, strict=True):
        assert r.key == e["patient"]["patient_key"].encode()
        per_key.setdefault(r.key, []).append(position[e["control_id"]])
    # Messages of one patient may travel on different connections here, so compare only those
    # sent on the same connection (which the listener must keep in order).
    for positions in per_key.values():
        same_conn: dict[int, list[int]] = {}
        for p in positions:
            same_conn.setdefault(p % 16, []).append(p)
        assert all(v == sorted(v) for v in same_conn.values())


async def test_retransmission_gets_the_same_ack_and_no_duplicate(
    start_listener: StartListener, database_url: str, broker: Broker, topics: dict[str, str]
) -> None:
    message = synthetic_feed(1, seed=12)[0]
    async with start_listener() as listener:
        port = listener.endpoints.mllp_port
        first = (await send_over(port, [message]))[0]
        again = (await send_over(port, [message, message]))
        # The stored ACK, marked in MSA-3 so that a person can tell it is no new decision.
        assert again == [mark_retransmission(first)] * 2
        assert ack_fields(again[0])["MSA"][3].startswith("retransmission")
        await wait_outbox_empty(database_url)
    assert len(await db_fetch(database_url, "SELECT id FROM adt_message")) == 1
    dups = await db_fetch(database_url, "SELECT same_bytes FROM adt_duplicate")
    assert [d["same_bytes"] for d in dups] == [True, True]
    records = await read_topic(broker.bootstrap, topics["adt_events"], expect=1, settle_s=1.0)
    assert len(records) == 1


async def test_pipelined_messages_are_answered_in_order(start_listener: StartListener) -> None:
    feed = synthetic_feed(40, seed=13)
    async with start_listener() as listener:
        client = await MllpClient.connect("127.0.0.1", listener.endpoints.mllp_port)
        acks = await client.send_many(feed, timeout=15)
        await client.close()
    assert [msa_control_id(a) for a in acks] == [control_id(m) for m in feed]


async def test_garbage_truncated_and_oversized_input(
    start_listener: StartListener, database_url: str, broker: Broker, topics: dict[str, str]
) -> None:
    good = synthetic_feed(3, seed=14)
    async with start_listener(mllp_max_frame_bytes=4096) as listener:
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.endpoints.mllp_port)
        # Garbage outside frames, a frame cut off by a new start block, then a good frame.
        writer.write(b"hello, this is not MLLP\r\n" + b"\x0bMSH|^~\\&|partial" + encode(good[0]))
        # An oversized frame whose head still carries MSH-10: answered AR echoing it.
        big = good[1].rstrip(b"\r") + b"\rZZZ|" + b"x" * 10_000 + b"\r"
        writer.write(encode(big))
        writer.write(encode(good[2]))
        await writer.drain()
        answers = []
        for _ in range(3):
            frame = await asyncio.wait_for(reader.readuntil(b"\x1c\x0d"), 10)
            answers.append(frame.strip(b"\x0b\x1c\r"))
        writer.close()
        await writer.wait_closed()
        assert [msa_control_id(a) for a in answers] == [control_id(m) for m in good]
        assert ack_code(answers[0]) in ("AA", "CA")
        assert ack_code(answers[1]) in ("AR", "CR") and ack_fields(answers[1])["ERR*"]
        assert ack_code(answers[2]) in ("AA", "CA")
        # Unparseable bytes inside a frame: AR with an ERR segment, and the service stays up.
        reply = (await send_over(listener.endpoints.mllp_port, [b"this is not HL7 at all"]))[0]
        assert ack_code(reply) == "AR" and ack_fields(reply)["ERR*"]
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{listener.endpoints.http_port}") as http:
            assert (await http.get("/healthz")).status_code == 200
    rejected = await db_fetch(database_url, "SELECT ack_code, errors FROM adt_message WHERE ack_code <> 'AA'")
    assert len(rejected) == 2  # the oversized head and the non-HL7 frame are kept with their reasons
    assert all(json.loads(r["errors"]) for r in rejected)
    # ... and published to the dead-letter topic, raw bytes included, per its contract.
    dead = [AdtDeadLetterV1.model_validate_json(r.value)
            for r in await read_topic(broker.bootstrap, topics["adt_deadletter"], expect=2)]
    assert sorted(d.ack_code for d in dead) == ["AR", "AR"]
    assert all(d.errors and d.errors[0].severity == "E" for d in dead)
    assert b"this is not HL7 at all" in [base64.b64decode(d.raw_base64) for d in dead]


async def test_sample_corpus_over_mllp(
    start_listener: StartListener, samples_dir: Path, database_url: str
) -> None:
    from adt_listener.intake import IntakePolicy, intake
    from tests.unit.test_corpus import EXPECTED

    def control_id_of(raw: bytes) -> str:
        return intake(raw, received_at=dt.datetime.now(dt.UTC), policy=IntakePolicy()).control_id or ""

    files = sorted((samples_dir / "messages").glob("*.hl7")) + sorted((samples_dir / "malformed").glob("*.hl7"))
    assert len(files) == 102
    no_ack: list[str] = []
    async with start_listener() as listener:
        port = listener.endpoints.mllp_port
        for path in files:
            raw = path.read_bytes()
            key = f"{path.parent.name}/{path.name}"
            if b"\x0b" in raw or b"\x1c" in raw:
                continue  # not representable in MLLP; the intake corpus test covers these
            expected = EXPECTED[key]
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(encode(raw))
            await writer.drain()
            if not intake(raw, received_at=dt.datetime.now(dt.UTC), policy=IntakePolicy()).send_ack:
                # Enhanced mode, MSH-15 NE: the sender asked for no ACK; it must still be kept.
                no_ack.append(control_id_of(raw))
                writer.close()
                await writer.wait_closed()
                continue
            frame = await asyncio.wait_for(reader.readuntil(b"\x1c\x0d"), 10)
            writer.close()
            await writer.wait_closed()
            commit_mode = {"AA": "CA", "AE": "CE", "AR": "CR"}[expected]
            assert ack_code(frame.strip(b"\x0b\x1c\r")) in {expected, commit_mode}, key
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{listener.endpoints.http_port}") as http:
            assert (await http.get("/healthz")).status_code == 200
    # Every input is kept as a message of its own: several samples reuse MSH-4 + MSH-10 (the
    # way a sender resetting its counter would), but each is a different message, none a
    # retransmission (tests/e2e/test_control_id_reuse.py).
    kept = [bytes(r["raw"]) for r in await db_fetch(database_url, "SELECT raw FROM adt_message")]
    sent = {p.read_bytes() for p in files if b"\x0b" not in p.read_bytes() and b"\x1c" not in p.read_bytes()}
    assert sorted(kept) == sorted(sent)
    assert await db_fetch(database_url, "SELECT id FROM adt_duplicate") == []
    stored_ids = {r["control_id"] for r in await db_fetch(database_url, "SELECT control_id FROM adt_message")}
    assert set(no_ack) <= stored_ids


async def test_http_intake_statuses(start_listener: StartListener) -> None:
    message = synthetic_feed(1, seed=15)[0]
    async with start_listener() as listener:
        base = f"http://127.0.0.1:{listener.endpoints.http_port}"
        async with httpx.AsyncClient(base_url=base) as http:
            er7 = {"content-type": "x-application/hl7-v2+er7"}
            ok = await http.post("/v1/adt", content=message, headers=er7)
            assert ok.status_code == 200 and ok.headers["x-hl7-ack-code"] == "AA"
            assert msa_control_id(ok.content) == control_id(message)
            bad = await http.post("/v1/adt", content=b"garbage")
            assert bad.status_code == 400 and bad.headers["x-hl7-ack-code"] == "AR"
            no_pid = b"MSH|^~\\&|A|F|B|G|20240101||ADT^A01|X1|P|2.5\rEVN|A01|20240101\rPV1|1|I\r"
            ae = await http.post("/v1/adt", content=no_pid)
            assert ae.status_code == 422 and ack_fields(ae.content)["ERR*"]
            empty = await http.post("/v1/adt", content=b"")
            assert empty.status_code == 400
            ready = await http.get("/readyz")
            assert ready.status_code == 200 and ready.json()["checks"] == {"database": "ok", "broker": "ok"}
            metrics = (await http.get("/metrics")).text
            assert 'wpc_adt_messages_acked_total{ack_code="AA",channel="http"' in metrics


async def test_senders_file_credentials_and_facilities(start_listener: StartListener, tmp_path: Path) -> None:
    token = uuid.uuid4().hex
    senders = tmp_path / "senders.yaml"
    senders.write_text(
        "senders:\n"
        "  - name: county-general\n"
        "    facilities: [COUNTYGEN]\n"
        f"    http_token_sha256: {hashlib.sha256(token.encode()).hexdigest()}\n"
        "    validation: off\n"
    )
    feed = synthetic_feed(40, seed=16)
    mine = next(m for m in feed if b"|COUNTYGEN|" in m.split(b"\r")[0])
    other = next(m for m in feed if b"|COUNTYGEN|" not in m.split(b"\r")[0])
    async with start_listener(senders_file=senders) as listener:
        base = f"http://127.0.0.1:{listener.endpoints.http_port}"
        async with httpx.AsyncClient(base_url=base) as http:
            assert (await http.post("/v1/adt", content=mine)).status_code == 401
            auth = {"authorization": f"Bearer {token}"}
            assert (await http.post("/v1/adt", content=mine, headers=auth)).status_code == 200
            foreign = await http.post("/v1/adt", content=other, headers=auth)
            assert foreign.status_code == 400 and "MSH^1^4" in foreign.text
            assert (await http.get("/v1/feed-quality")).status_code == 401
        # On plain MLLP the MSH-4 names the sender: unregistered facilities are rejected.
        acks = await send_over(listener.endpoints.mllp_port, [other])
        assert ack_code(acks[0]) in ("AR", "CR")
