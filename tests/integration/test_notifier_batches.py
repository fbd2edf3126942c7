"""The notifier applies a consumer batch in one transaction, with one dedupe statement and,
for a batch of `adt.events` only, one look at who watches its patients: what each record
causes must stay what it causes alone (tests/integration/test_notifier_flow.py)."""

from __future__ import annotations

from typing import Any

from aiokafka import ConsumerRecord

from tests.adt_builder import adt, event
from tests.integration import test_notifier_flow
from tests.integration.test_notifier_flow import NOW, TOPICS, Rig, admission, candidate, enroll, status

rig_factory = test_notifier_flow.rig_factory  # the fixture, shared


def record(topic: str, value: bytes, offset: int) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(topic=topic, partition=0, offset=offset, timestamp=0, timestamp_type=0, key=None,
                          value=value, checksum=None, serialized_key_size=0, serialized_value_size=len(value),
                          headers=())


def adt_record(raw: bytes, offset: int) -> ConsumerRecord[bytes, bytes]:
    return record(TOPICS.adt_events, event(raw).model_dump_json().encode(), offset)


async def admits(rig: Rig) -> list[str]:
    rows = await rig.rows("SELECT recipient_id FROM notice WHERE event_kind = 'admit' ORDER BY recipient_id")
    return [r["recipient_id"] for r in rows]


async def test_a_batch_of_admissions_tells_only_the_watchers_and_each_event_once(rig_factory: Any) -> None:
    rig: Rig = await rig_factory()
    await enroll(rig, candidate("TOC"))
    watched = adt_record(admission("A01", facility="STMARY", visit="V100"), 1)
    stranger = adt_record(adt("A01", facility="STMARY", mrn="S-99", visit="V200", at=NOW, admit=NOW,
                              medi_cal_id="97777777A"), 2)
    again = record(TOPICS.adt_events, watched.value or b"", 3)  # the same event, redelivered in the batch

    await rig.handler([watched, stranger, again])

    assert await admits(rig) == ["clinic", "toc-team"]  # the enrollee's team and PCP, once each
    processed = await rig.rows("SELECT count(*) AS n FROM notifier_processed WHERE topic = $1", TOPICS.adt_events)
    assert processed[0]["n"] == 2
    await rig.handler([watched])  # a later redelivery: a duplicate, nothing more
    assert await admits(rig) == ["clinic", "toc-team"]


async def test_watches_made_earlier_in_the_batch_count_for_its_admissions(rig_factory: Any) -> None:
    """Candidate, acceptance, enrollment and then an admission, all in one batch: the
    watches the enrollment makes are there when the admission is applied."""
    rig: Rig = await rig_factory()
    cand = candidate("TOC")
    batch = [
        record(TOPICS.candidates, cand.model_dump_json().encode(), 1),
        record(TOPICS.enrollment_events, status(cand, "accepted").model_dump_json().encode(), 2),
        record(TOPICS.enrollment_events, status(cand, "enrolled").model_dump_json().encode(), 3),
        adt_record(admission("A01", facility="STMARY", visit="V100", minutes=5), 4),
    ]

    await rig.handler(batch)

    assert await admits(rig) == ["clinic", "toc-team"]
