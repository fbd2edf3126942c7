"""The group-commit store against the real PostgreSQL: a retransmission (same message) is
answered with the stored ACK and kept aside; a different message under a used control id
is stored as the new message it is, also within one batch. And migration 0006 on a
database that already holds messages."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import AsyncEngine

from adt_listener.ack import RETRANSMISSION_TEXT
from adt_listener.digest import content_digest
from adt_listener.er7 import Message
from adt_listener.intake import Intake, IntakePolicy, intake
from adt_listener.store import Custody, MessageStore, Stored, Topics
from services.db import MIGRATIONS_DIR, create_engine, migrate

POLICY = IntakePolicy()
NOW = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    eng = create_engine(database_url, pool_size=2)
    yield eng
    await eng.dispose()


@pytest.fixture
async def store(engine: AsyncEngine) -> AsyncIterator[MessageStore]:
    s = MessageStore(engine, Topics("adt.events.t", "adt.deadletter.t"), writers=1)
    await s.start()
    yield s
    await s.stop()


def decided(raw: bytes) -> Intake:
    return intake(raw, received_at=NOW, policy=POLICY, with_event=False)


def custody(d: Intake) -> Custody:
    return Custody(d, "mllp", "test", False, NOW)


async def store_group(store: MessageStore, group: list[Intake]) -> list[Stored]:
    """Commit ``group`` in ONE statement (a submitted group is never split) and return its results."""
    done: asyncio.Future[list[Stored] | None] = asyncio.get_running_loop().create_future()
    store.submit([custody(d) for d in group], done.set_result)
    results = await done
    assert results is not None
    return results


async def rows(engine: AsyncEngine, sql: str) -> list[dict[str, object]]:
    async with engine.connect() as conn:
        return [dict(r._mapping) for r in (await conn.execute(text(sql))).all()]


def sample(samples_dir: Path, name: str) -> bytes:
    return (samples_dir / "messages" / name).read_bytes()


def new_msh7(raw: bytes) -> bytes:
    """The same message as an engine resends it: MSH-7 stamped anew."""
    first, rest = raw.split(b"\r", 1)
    fs = first[3:4]
    parts = first.split(fs)
    parts[6] = b"20991231235959"
    return fs.join(parts) + b"\r" + rest


async def test_one_batch_keeps_two_messages_under_one_control_id_and_answers_their_resends(
    store: MessageStore, engine: AsyncEngine, samples_dir: Path
) -> None:
    a01 = sample(samples_dir, "001_msft_A01.hl7")  # GHHSFacility, MSG00001
    a02 = sample(samples_dir, "002_msft_A02.hl7")  # GHHSFacility, MSG00001 again: another message
    group = [decided(a01), decided(a02), decided(a01), decided(new_msh7(a02))]
    first, second, resend, restamped = await store_group(store, group)

    assert (first.duplicate, second.duplicate) == (False, False)
    assert (first.message_id, second.message_id) == (group[0].message_id, group[1].message_id)
    assert (first.ack, second.ack) == (group[0].ack, group[1].ack)  # each its own ACK
    assert Message.parse(second.ack).segments[0].field(9) == "ACK^A02^ACK"
    assert resend.duplicate and resend.message_id == first.message_id
    assert restamped.duplicate and restamped.message_id == second.message_id
    for answer, original in ((resend, first), (restamped, second)):
        ack = Message.parse(answer.ack)
        assert ack.get("MSA-3").startswith("retransmission") and ack.get("MSA-3") == RETRANSMISSION_TEXT
        assert ack.get("MSH-10") == Message.parse(original.ack).get("MSH-10")  # the stored answer

    stored = await rows(engine, "SELECT id, trigger_event, event_id, content_digest FROM adt_message")
    assert sorted(str(r["trigger_event"]) for r in stored) == ["A01", "A02"]
    assert len({r["event_id"] for r in stored}) == 2
    assert {bytes(r["content_digest"]) for r in stored} == {content_digest(a01), content_digest(a02)}  # type: ignore[arg-type]
    queued = await rows(engine, "SELECT message_id FROM adt_event_queue ORDER BY id")
    assert [r["message_id"] for r in queued] == [group[0].message_id, group[1].message_id]  # arrival order
    dups = await rows(engine, "SELECT original_id, same_bytes FROM adt_duplicate ORDER BY id")
    assert [(r["original_id"], r["same_bytes"]) for r in dups] == [
        (group[0].message_id, True), (group[1].message_id, False)
    ]


async def test_a_later_batch_finds_the_original_and_a_new_message_is_stored(
    store: MessageStore, engine: AsyncEngine, samples_dir: Path
) -> None:
    a01 = sample(samples_dir, "001_msft_A01.hl7")
    await store_group(store, [decided(a01)])
    resend, a03 = await store_group(store, [decided(new_msh7(a01)), decided(sample(samples_dir, "003_msft_A03.hl7"))])
    assert resend.duplicate and not a03.duplicate
    assert [r["n"] for r in await rows(engine, "SELECT count(*) AS n FROM adt_message")] == [2]


async def test_rejected_messages_are_never_deduplicated(store: MessageStore, engine: AsyncEngine) -> None:
    no_pid = b"MSH|^~\\&|A|F|B|G|20240101||ADT^A01|X1|P|2.5\rEVN|A01|20240101\rPV1|1|I\r"
    results = await store_group(store, [decided(no_pid), decided(no_pid)])
    assert [r.duplicate for r in results] == [False, False]
    assert [r["n"] for r in await rows(engine, "SELECT count(*) AS n FROM adt_message WHERE ack_code = 'AE'")] == [2]


# --- migration 0006 on a database with messages ---------------------------------------------


def _alembic(connection: Connection, action: str, revision: str) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    getattr(command, action)(config, revision)


_OLD_ROW = text(
    "INSERT INTO adt_message (id, channel, sender, sending_facility, control_id, trigger_event, ack_code, "
    "ack, raw, event_id) VALUES (:id, 'mllp', 'test', :f, :c, :t, :code, :ack, :raw, :e)"
)


async def test_migration_0006_backfills_digests_so_old_messages_still_dedupe(
    engine: AsyncEngine, samples_dir: Path
) -> None:
    async with engine.begin() as conn:
        await conn.run_sync(_alembic, "downgrade", "0005")  # the schema before this change
    old = [decided(sample(samples_dir, n)) for n in ("001_msft_A01.hl7", "019_hapi_A03.hl7")]
    rejected = decided(b"this is not HL7")
    async with engine.begin() as conn:
        for d in (*old, rejected):
            await conn.execute(_OLD_ROW, {
                "id": d.message_id, "f": d.sending_facility, "c": d.control_id, "t": d.trigger_event,
                "code": d.ack_code, "ack": d.ack, "raw": d.raw, "e": d.event_id,
            })
    await migrate(engine)

    digests = {r["id"]: bytes(r["content_digest"])  # type: ignore[arg-type]
               for r in await rows(engine, "SELECT id, content_digest FROM adt_message")}
    assert digests == {d.message_id: content_digest(d.raw) for d in (*old, rejected)}

    store = MessageStore(engine, Topics("adt.events.t", "adt.deadletter.t"), writers=1)
    await store.start()
    try:
        resend = await store.store(custody(decided(new_msh7(old[0].raw))))
        other = await store.store(custody(decided(sample(samples_dir, "002_msft_A02.hl7"))))
    finally:
        await store.stop()
    assert resend.duplicate and resend.message_id == old[0].message_id
    assert not other.duplicate  # MSG00001 again, but an A02: a new message beside the old A01

    with pytest.raises(RuntimeError, match="cannot downgrade below 0006"):
        async with engine.begin() as conn:
            await conn.run_sync(_alembic, "downgrade", "0005")


async def test_migration_0006_downgrades_when_no_control_id_is_reused(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.run_sync(_alembic, "downgrade", "0005")
    columns = await rows(engine, "SELECT column_name FROM information_schema.columns "
                                 "WHERE table_name = 'adt_message' AND column_name = 'content_digest'")
    assert columns == []
    await migrate(engine)
    assert len(await rows(engine, "SELECT column_name FROM information_schema.columns "
                                  "WHERE table_name = 'adt_message' AND column_name = 'content_digest'")) == 1
