"""Control ids reused for different messages, as the public samples do, driven over MLLP
and HTTP like a hospital would (issue 10 part 7).

Ten different samples (A01 ... A31) say MSH-4 GHHSFacility and MSH-10 MSG00001, four say
HZL and 123456. Each is a message of its own: its own row, its own event on adt.events,
its own ACK. Only the same message again (same bytes, or a new MSH-7) is a
retransmission, answered with the stored ACK marked in MSA-3 and kept aside.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from tests.conftest import Broker
from tests.e2e.conftest import StartListener
from tests.e2e.helpers import ack_fields, db_fetch, wait_outbox_empty
from tests.kafka_util import read_topic
from wpc.tools.send import MllpClient

MSG00001 = [  # GHHSFacility, v2.8
    "001_msft_A01.hl7", "002_msft_A02.hl7", "003_msft_A03.hl7", "004_msft_A04.hl7", "005_msft_A05.hl7",
    "008_msft_A08.hl7", "009_msft_A11.hl7", "010_msft_A13.hl7", "011_msft_A28.hl7", "012_msft_A31.hl7",
]
ID_123456 = ["056_ipf_A01.hl7", "057_ipf_A01.hl7", "058_ipf_A08.hl7", "067_ipf_A01.hl7"]  # HZL, v2.2, MSH-15 ER


def trigger_of(name: str) -> str:
    return name.rsplit("_", 1)[1].removesuffix(".hl7")


def restamped(raw: bytes) -> bytes:
    """The same message as an engine resends it: a new MSH-7, nothing else changed."""
    first, rest = raw.split(b"\r", 1)
    fields = first.split(b"|")
    fields[6] = b"20991231235959"
    return b"|".join(fields) + b"\r" + rest


async def test_samples_sharing_a_control_id_are_each_stored_published_and_answered(
    start_listener: StartListener, samples_dir: Path, database_url: str, broker: Broker, topics: dict[str, str]
) -> None:
    raw = {name: (samples_dir / "messages" / name).read_bytes() for name in MSG00001 + ID_123456}
    async with start_listener() as listener:
        client = await MllpClient.connect("127.0.0.1", listener.endpoints.mllp_port)
        try:
            acks = await client.send_many([raw[n] for n in MSG00001], timeout=15)
        finally:
            await client.close()
        for name, ack in zip(MSG00001, acks, strict=True):
            fields = ack_fields(ack)
            assert fields["MSH"][8] == f"ACK^{trigger_of(name)}^ACK", name  # an A02 gets ACK^A02, not ACK^A01
            assert fields["MSA"][1:3] == ["AA", "MSG00001"], name
            assert len(fields["MSA"]) < 4 or not fields["MSA"][3].startswith("retransmission"), name
        assert len({ack_fields(a)["MSH"][9] for a in acks}) == len(acks)  # ten answers, not one ten times

        base = f"http://127.0.0.1:{listener.endpoints.http_port}"
        async with httpx.AsyncClient(base_url=base) as http:
            # MSH-15 ER: over MLLP these get no ACK when accepted; over HTTP the ACK is the body.
            for name in ID_123456:
                answer = await http.post("/v1/adt", content=raw[name])
                assert answer.status_code == 200 and answer.headers["x-hl7-ack-code"] == "AA", name
                assert "x-wpc-duplicate" not in answer.headers, name
                assert ack_fields(answer.content)["MSA"][1:3] == ["CA", "123456"], name  # enhanced mode: CA

            # True retransmissions: the same bytes over MLLP, a new MSH-7 over HTTP.
            client = await MllpClient.connect("127.0.0.1", listener.endpoints.mllp_port)
            try:
                again = await client.send(raw["001_msft_A01.hl7"], timeout=15)
            finally:
                await client.close()
            assert again.split(b"\r")[0] == acks[0].split(b"\r")[0]  # the stored answer: same MSH, MSH-10
            assert ack_fields(again)["MSA"][1:4] == ["AA", "MSG00001", "retransmission: stored acknowledgement"]
            resent = await http.post("/v1/adt", content=restamped(raw["002_msft_A02.hl7"]))
            assert resent.status_code == 200 and resent.headers["x-wpc-duplicate"] == "1"
            assert resent.content.split(b"\r")[0] == acks[1].split(b"\r")[0]
            assert ack_fields(resent.content)["MSA"][3].startswith("retransmission")

            await wait_outbox_empty(database_url)
            report = {q["sending_facility"]: q for q in (await http.get("/v1/feed-quality")).json()}

    stored = await db_fetch(database_url, "SELECT sending_facility, control_id, trigger_event, raw FROM adt_message")
    assert sorted(bytes(r["raw"]) for r in stored) == sorted(raw.values())  # every one kept, once
    assert sorted((r["control_id"], r["trigger_event"]) for r in stored) == sorted(
        [("MSG00001", trigger_of(n)) for n in MSG00001] + [("123456", trigger_of(n)) for n in ID_123456]
    )
    duplicates = await db_fetch(database_url, "SELECT same_bytes FROM adt_duplicate ORDER BY id")
    assert [d["same_bytes"] for d in duplicates] == [True, False]

    records = await read_topic(broker.bootstrap, topics["adt_events"], expect=len(raw), settle_s=1.0)
    events = [json.loads(r.value) for r in records]
    assert len(events) == len(raw) and len({e["event_id"] for e in events}) == len(raw)
    assert sorted((e["sending_facility"], e["control_id"], e["trigger_event"]) for e in events) == sorted(
        [("GHHSFacility", "MSG00001", trigger_of(n)) for n in MSG00001]
        + [("HZL", "123456", trigger_of(n)) for n in ID_123456]
    )

    assert report["GHHSFacility"]["control_id_reuse"]["control_ids"] == 1
    assert report["GHHSFacility"]["control_id_reuse"]["messages"] == len(MSG00001) - 1
    assert report["HZL"]["control_id_reuse"]["messages"] == len(ID_123456) - 1
