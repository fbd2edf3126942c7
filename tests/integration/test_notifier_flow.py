"""The notifier from Kafka records to receivers, on the real PostgreSQL and real receivers
(an HTTP server for webhooks and FHIR, an SMTP server), with a clock the test moves.

The handler is fed the records' bytes as the consumer loop would; the dispatcher's
planner and sender are stepped by hand, so retries, leases and bundling windows are
checked without sleeping through them.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from notifier import store
from notifier.channels.email import EmailChannel
from notifier.channels.fhir import FhirChannel
from notifier.channels.webhook import WebhookChannel
from notifier.config import NotifyConfig, config_from_text, endpoints_of
from notifier.dispatcher import Dispatcher, pcp_notified
from notifier.handler import NotifierHandler, Topics
from notifier.model import Outbound
from schemas.adt_event import Identifier, Provider
from schemas.enrollment import EncounterRef, EnrollmentCandidateV1, EnrollmentEventV1, candidate_event_id
from services.db import create_engine
from tests.adt_builder import adt, event
from tests.receivers import HttpReceiver, SmtpReceiver

SECRET = "test-hmac-key"
TOPICS = Topics("adt", "cands", "events", "notifications.deadletter")
NOW = dt.datetime(2026, 11, 18, 17, 0, tzinfo=dt.UTC)  # a Wednesday, 09:00 in Los Angeles
PCP_NPI = "1234567893"
FQHC_NPI = "1679576722"
MEDI_CAL = "95000000A"


def config_text(
    hooks: str, smtp_port: int, *, window: float = 0, max_per_hour: int | None = None, without_consent: str = "redact"
) -> str:
    limit = f"max_per_hour: {max_per_hour}" if max_per_hour else ""
    return f"""
version: test-1
timezone: America/Los_Angeles
portal_url: https://portal.example.org/wpc
bundle_window_s: {window}
retry: {{max_attempts: 3, first_delay_s: 1, max_delay_s: 4, lease_s: 30}}
smtp: {{host: 127.0.0.1, port: {smtp_port}, sender: wpc@example.org}}
part2:
  facilities: [DTSOBERING]
  sud_code_prefixes: [F10, F11, F12, F13, F14, F15, F16, F17, F18, F19, T40]
  without_consent: {without_consent}
care_teams:
  - id: toc-team
    name: TOC
    programs: [TOC]
    {limit}
    endpoints: [{{name: webhook, channel: webhook, url: "{hooks}/hooks/toc", secret_env: S}}]
  - id: isr-team
    name: ISR
    programs: [ISR]
    endpoints: [{{name: webhook, channel: webhook, url: "{hooks}/hooks/isr", secret_env: S}}]
  - id: sud-team
    name: SUD-ENS
    programs: [SUD-ENS]
    part2_qualified: true
    endpoints: [{{name: webhook, channel: webhook, url: "{hooks}/hooks/sud", secret_env: S}}]
practices:
  - id: clinic
    name: Clinic
    provider_ids: ["{PCP_NPI}"]
    endpoints:
      - {{name: fhir, channel: fhir, url: "{hooks}/fhir"}}
      - {{name: webhook, channel: webhook, url: "{hooks}/hooks/clinic", secret_env: S, events: [enrolled]}}
  - id: fqhc
    name: FQHC
    provider_ids: ["{FQHC_NPI}"]
    endpoints: [{{name: email, channel: email, to: [referrals@fqhc.example.org]}}]
"""


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)


@dataclass
class Rig:
    cfg: NotifyConfig
    engine: AsyncEngine
    handler: NotifierHandler
    dispatcher: Dispatcher
    hooks: HttpReceiver
    smtp: SmtpReceiver
    clock: Clock
    database_url: str

    async def feed(self, topic: str, model: Any) -> None:
        await self.handler.apply(topic, model.model_dump_json().encode())

    async def deliver(self, rounds: int = 1) -> int:
        sent = 0
        for _ in range(rounds):
            await self.dispatcher.plan_once()
            sent += await self.dispatcher.send_once()
        return sent

    async def rows(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        conn = await asyncpg.connect(self.database_url.replace("+asyncpg", ""))
        try:
            return list(await conn.fetch(sql, *args))
        finally:
            await conn.close()

    def bodies(self, path: str) -> list[dict[str, Any]]:
        return [json.loads(r.body) for r in self.hooks.requests if r.path == path]


@pytest.fixture
async def rig_factory(database_url: str) -> AsyncIterator[Any]:
    made: list[tuple[AsyncEngine, HttpReceiver, SmtpReceiver, list[Any]]] = []

    async def make(**options: Any) -> Rig:
        hooks = HttpReceiver(secret=SECRET)
        smtp = SmtpReceiver()
        await hooks.start()
        await smtp.start()
        cfg = config_from_text(config_text(hooks.url, smtp.port, **options))
        clock = Clock()
        engine = create_engine(database_url, pool_size=4)
        endpoints = {r.id: endpoints_of(r, {"S": SECRET}) for r in (*cfg.care_teams, *cfg.practices)}
        channels: dict[str, Any] = {
            "webhook": WebhookChannel(total_timeout=1.0, clock=lambda: clock.now.timestamp()),
            "fhir": FhirChannel(total_timeout=1.0),
            "email": EmailChannel(host=smtp.host, port=smtp.port, sender="wpc@example.org", timeout=5),
        }
        dispatcher = Dispatcher(engine, cfg, endpoints, channels, deadletter_topic=TOPICS.deadletter, clock=clock)
        handler = NotifierHandler(engine, cfg, TOPICS, clock=clock)
        hooks.clock = lambda: clock.now.timestamp()
        made.append((engine, hooks, smtp, list(channels.values())))
        return Rig(cfg, engine, handler, dispatcher, hooks, smtp, clock, database_url)

    yield make
    for engine, hooks, smtp, channels in made:
        for channel in channels:
            if hasattr(channel, "close"):
                await channel.close()
        await hooks.stop()
        await smtp.stop()
        await engine.dispose()


def candidate(
    program: str = "TOC", *, facility: str = "COUNTYGEN", pcp: str | None = PCP_NPI, person: uuid.UUID | None = None
) -> EnrollmentCandidateV1:
    cid = uuid.uuid4()
    return EnrollmentCandidateV1(
        event_id=candidate_event_id(cid),
        candidate_id=cid,
        program=program,  # type: ignore[arg-type]
        person_id=person or uuid.uuid4(),
        identifiers=[
            Identifier(value="C-55", assigning_authority=facility, type_code="MR"),
            Identifier(value=MEDI_CAL, assigning_authority="MEDI-CAL", type_code="MA"),
        ],
        medi_cal_id=MEDI_CAL,
        primary_care=[Provider(id=pcp, family="WELBY", given="MARCUS", source="PD1-4")] if pcp else [],
        trigger=EncounterRef(
            encounter_id=uuid.uuid4(),
            facility=facility,
            visit_number="V9",
            kind="inpatient",
            patient_class="I",
            admit_time=NOW - dt.timedelta(hours=2),
        ),
        criteria=[],
        reason=f"{program}: every criterion met",
        rule_version="test+abc",
        decided_at=NOW,
    )


def status(cand: EnrollmentCandidateV1, to: str, at: dt.datetime = NOW) -> EnrollmentEventV1:
    return EnrollmentEventV1(
        event_id=uuid.uuid4(),
        candidate_id=cand.candidate_id,
        person_id=cand.person_id,
        program=cand.program,
        from_status=None,
        to_status=to,
        actor="maria",
        at=at,  # type: ignore[arg-type]
    )


async def enroll(rig: Rig, cand: EnrollmentCandidateV1) -> None:
    await rig.feed(TOPICS.candidates, cand)
    await rig.feed(TOPICS.enrollment_events, status(cand, "accepted"))
    await rig.feed(TOPICS.enrollment_events, status(cand, "enrolled", NOW + dt.timedelta(minutes=1)))


def admission(
    trigger: str = "A01",
    *,
    facility: str = "STMARY",
    visit: str = "V100",
    dx: tuple[str, ...] = (),
    patient_class: str = "I",
    minutes: int = 0,
) -> bytes:
    at = NOW + dt.timedelta(minutes=minutes)
    return adt(
        trigger,
        facility=facility,
        mrn="S-77",
        visit=visit,
        at=at,
        admit=NOW,
        dx=dx,
        patient_class=patient_class,
        discharge=at if trigger == "A03" else None,
    )


async def feed_adt(rig: Rig, raw: bytes) -> None:
    await rig.feed(TOPICS.adt_events, event(raw, received_at=rig.clock.now))


# --- candidates ---------------------------------------------------------------------------


async def test_a_candidate_reaches_its_team_once_signed_and_audited(rig_factory: Any) -> None:
    rig: Rig = await rig_factory()
    cand = candidate("TOC")
    await rig.feed(TOPICS.candidates, cand)
    await rig.feed(TOPICS.candidates, cand)  # redelivery
    assert await rig.deliver() == 1
    assert await rig.deliver() == 0
    (body,) = rig.bodies("/hooks/toc")
    assert len(rig.hooks.unique) == 1
    (notice,) = body["notices"]
    assert body["recipient_id"] == "toc-team" and body["digest"] is False
    assert notice["event"] == "candidate" and notice["program"] == "TOC"
    assert notice["candidate_id"] == str(cand.candidate_id)
    assert {i["value"] for i in notice["patient"]["ids"]} == {"C-55", MEDI_CAL}
    assert notice["encounter"]["facility"] == "COUNTYGEN" and notice["encounter"]["visit_number"] == "V9"
    request = next(r for r in rig.hooks.requests if r.path == "/hooks/toc")
    assert request.headers["idempotency-key"] == body["delivery_id"]
    (delivery,) = await rig.rows("SELECT status, attempts FROM delivery")
    assert (delivery["status"], delivery["attempts"]) == ("delivered", 1)
    audit = await rig.rows("SELECT actor, action, person_id, candidate_id, detail FROM audit")
    assert [(a["actor"], a["action"], a["person_id"], a["candidate_id"]) for a in audit] == [
        ("notifier", "disclose", cand.person_id, cand.candidate_id)
    ]
    assert "recipient=toc-team" in audit[0]["detail"] and "C-55" not in audit[0]["detail"]


# --- enrollment: the PCP --------------------------------------------------------------------


async def test_enrollment_tells_the_pcp_once_whatever_the_order_and_counts_in_the_measure(rig_factory: Any) -> None:
    rig: Rig = await rig_factory()
    first, second = candidate("TOC"), candidate("ISR", pcp=None)
    await enroll(rig, first)
    # The second one's enrollment arrives before the candidate itself (two topics).
    await rig.feed(TOPICS.enrollment_events, status(second, "enrolled"))
    await rig.feed(TOPICS.candidates, second)
    await rig.feed(TOPICS.candidates, second)
    await rig.deliver()
    clinic = rig.bodies("/hooks/clinic")
    assert [b["notices"][0]["event"] for b in clinic] == ["enrolled"]
    assert clinic[0]["notices"][0]["pcp"] == {"id": PCP_NPI, "family": "WELBY", "given": "MARCUS"}
    # No PCP in the message and no roster: nobody to tell, and the measure shows it.
    measure = {(m["program"], m["month"]): m for m in await _measure(rig)}
    assert measure[("TOC", "2026-11")]["share"] == 1.0
    assert measure[("ISR", "2026-11")]["pcp_notified"] == 0
    withheld = await rig.rows("SELECT detail FROM audit WHERE action = 'withhold'")
    assert [w["detail"] for w in withheld] == ["recipient=pcp reason=pcp_unknown event=enrolled"]


async def test_the_roster_names_the_pcp_when_the_message_has_none(rig_factory: Any) -> None:
    rig: Rig = await rig_factory()
    conn = await asyncpg.connect(rig.database_url)
    try:
        await conn.execute(
            "INSERT INTO roster (member_id, practice_id, effective_from, effective_to, source) "
            "VALUES ($1, 'clinic', '2026-01-01', '2026-06-30', 'plan'), "
            "($1, 'fqhc', '2026-07-01', NULL, 'plan')",
            MEDI_CAL,
        )
    finally:
        await conn.close()
    await enroll(rig, candidate("TOC", pcp=None))
    await rig.deliver()
    (mail,) = await rig.smtp.wait_for(1)
    assert mail["Subject"].startswith("WPC: enrollment (TOC), ref ")
    text = mail.get_content()
    assert MEDI_CAL not in text and "C-55" not in text and "portal.example.org" in text


async def _measure(rig: Rig) -> list[dict[str, Any]]:
    async with rig.engine.connect() as conn:
        return await pcp_notified(conn, rig.cfg.timezone)


# --- encounters of enrollees ----------------------------------------------------------------


async def test_an_enrollees_admission_elsewhere_alerts_team_and_pcp(rig_factory: Any) -> None:
    rig: Rig = await rig_factory()
    await enroll(rig, candidate("TOC"))
    await rig.deliver()
    await feed_adt(rig, admission("A01", facility="STMARY", dx=("I10",)))
    await feed_adt(rig, admission("A08", facility="STMARY"))  # updates are not notified
    await rig.deliver()
    (team,) = rig.bodies("/hooks/toc")[-1:]
    notice = team["notices"][0]
    assert notice["event"] == "admit" and notice["program"] == "TOC"
    assert notice["encounter"]["facility"] == "STMARY" and notice["patient"]["family"] == "DOE"
    (fhir,) = [r for r in rig.hooks.requests if r.path == "/fhir/$process-message"]
    bundle = json.loads(fhir.body)
    header = bundle["entry"][0]["resource"]
    assert bundle["type"] == "message" and header["resourceType"] == "MessageHeader"
    assert header["eventCoding"]["code"] == "notification-admit"
    conditions = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Condition"]
    assert [c["code"]["coding"][0]["code"] for c in conditions] == ["I10"]


async def test_disenrollment_stops_the_alerts(rig_factory: Any) -> None:
    rig: Rig = await rig_factory()
    cand = candidate("TOC")
    await enroll(rig, cand)
    await rig.feed(TOPICS.enrollment_events, status(cand, "disenrolled", NOW + dt.timedelta(days=30)))
    await feed_adt(rig, admission("A01"))
    await rig.deliver()
    assert [b["notices"][0]["event"] for b in rig.bodies("/hooks/toc")] == ["candidate"]  # no admit
    assert not [r for r in rig.hooks.requests if r.path.startswith("/fhir")]
    assert await rig.rows("SELECT * FROM watch") == []


# --- 42 CFR Part 2 --------------------------------------------------------------------------


async def test_part2_without_consent_the_pcp_gets_no_sud_detail_and_nothing_from_a_part2_facility(
    rig_factory: Any,
) -> None:
    rig: Rig = await rig_factory()
    cand = candidate("SUD-ENS", facility="COUNTYGEN")
    await enroll(rig, cand)
    await rig.deliver()
    (enrolled,) = rig.bodies("/hooks/clinic")
    notice = enrolled["notices"][0]
    assert notice["event"] == "enrolled" and "program" not in notice and "reason" not in notice
    assert notice["withheld"] == ["program"]
    # An ED visit at the Part 2 sobering center: the SUD team (a Part 2 program) hears of
    # it, the PCP does not, and the audit says why.
    await feed_adt(rig, admission("A04", facility="DTSOBERING", visit="S1", patient_class="E", dx=("F10.129",)))
    # An admission at a general hospital with an SUD and a heart diagnosis.
    await feed_adt(rig, admission("A01", facility="STMARY", visit="V2", dx=("F11.20", "I50.9")))
    await rig.deliver()
    sud = sorted((b["notices"][0] for b in rig.bodies("/hooks/sud") if b["notices"][0]["event"] != "candidate"),
                 key=lambda n: n["encounter"]["facility"])
    assert [(n["event"], n["encounter"]["facility"]) for n in sud] == [("admit", "DTSOBERING"), ("admit", "STMARY")]
    assert [d["code"] for d in sud[1]["encounter"]["diagnoses"]] == ["F11.20", "I50.9"]
    bundles = [json.loads(r.body) for r in rig.hooks.requests if r.path == "/fhir/$process-message"]
    assert len(bundles) == 1
    encounter = next(e["resource"] for e in bundles[0]["entry"] if e["resource"]["resourceType"] == "Encounter")
    assert encounter["serviceProvider"]["reference"]  # STMARY, not the sobering center
    codes = [
        e["resource"]["code"]["coding"][0]["code"]
        for e in bundles[0]["entry"]
        if e["resource"]["resourceType"] == "Condition"
    ]
    assert codes == ["I50.9"]
    assert "DTSOBERING" not in fhir_text(rig) and "F11" not in fhir_text(rig)
    withheld = [w["detail"] for w in await rig.rows("SELECT detail FROM audit WHERE action = 'withhold'")]
    assert withheld == ["recipient=clinic reason=part2_facility_without_consent event=admit"]
    disclosed = [
        d["detail"]
        for d in await rig.rows(
            "SELECT detail FROM audit WHERE action = 'disclose' AND detail LIKE 'recipient=clinic endpoint=fhir%'"
        )
    ]
    assert len(disclosed) == 1 and "withheld=sud_diagnoses" in disclosed[0]


def fhir_text(rig: Rig) -> str:
    return "".join(r.body.decode() for r in rig.hooks.requests if r.path.startswith("/fhir"))


async def test_part2_with_consent_the_pcp_gets_the_sud_detail(rig_factory: Any) -> None:
    rig: Rig = await rig_factory()
    cand = candidate("SUD-ENS")
    conn = await asyncpg.connect(rig.database_url)
    try:
        await conn.execute(
            "INSERT INTO consent (person_id, scope, granted_at, recorded_by, source) "
            "VALUES ($1, 'pcp', $2, 'maria', 'form 12')",
            cand.person_id,
            NOW - dt.timedelta(days=1),
        )
    finally:
        await conn.close()
    await enroll(rig, cand)
    await feed_adt(rig, admission("A04", facility="DTSOBERING", visit="S1", patient_class="E", dx=("F10.129",)))
    await rig.deliver()
    (enrolled,) = rig.bodies("/hooks/clinic")
    assert enrolled["notices"][0]["program"] == "SUD-ENS" and enrolled["notices"][0]["withheld"] == []
    (bundle,) = [json.loads(r.body) for r in rig.hooks.requests if r.path == "/fhir/$process-message"]
    codes = [
        e["resource"]["code"]["coding"][0]["code"]
        for e in bundle["entry"]
        if e["resource"]["resourceType"] == "Condition"
    ]
    assert codes == ["F10.129"]


async def test_part2_omit_sends_nothing_with_sud_information(rig_factory: Any) -> None:
    rig: Rig = await rig_factory(without_consent="omit")
    await enroll(rig, candidate("SUD-ENS"))
    await rig.deliver()
    assert rig.bodies("/hooks/clinic") == []
    (row,) = await rig.rows("SELECT status, suppressed_reason FROM notice WHERE recipient_id = 'clinic'")
    assert (row["status"], row["suppressed_reason"]) == ("suppressed", "sud_information_without_consent")


# --- bundling, cancels, rate limit ------------------------------------------------------------


async def test_admit_then_discharge_within_the_window_is_one_notice(rig_factory: Any) -> None:
    rig: Rig = await rig_factory(window=120)
    await enroll(rig, candidate("TOC"))
    await rig.deliver()
    await feed_adt(rig, admission("A04", visit="ED1", patient_class="E", dx=("R07.9",)))
    rig.clock.advance(60)
    await feed_adt(rig, admission("A03", visit="ED1", patient_class="E", dx=("I20.0",), minutes=1))
    assert await rig.deliver() == 0  # still inside the window
    rig.clock.advance(61)
    await rig.deliver()
    (team,) = [b for b in rig.bodies("/hooks/toc") if b["notices"][0]["event"] != "candidate"]
    (notice,) = team["notices"]
    assert notice["event"] == "admit_discharge"
    assert [d["code"] for d in notice["encounter"]["diagnoses"]] == ["R07.9", "I20.0"]
    (bundle,) = [json.loads(r.body) for r in rig.hooks.requests if r.path == "/fhir/$process-message"]
    assert bundle["entry"][0]["resource"]["eventCoding"]["code"] == "notification-discharge"


async def test_a_cancelled_admit_inside_the_window_is_never_sent(rig_factory: Any) -> None:
    rig: Rig = await rig_factory(window=120)
    await enroll(rig, candidate("TOC"))
    await rig.deliver()
    await feed_adt(rig, admission("A01", visit="X1"))
    await feed_adt(rig, admission("A11", visit="X1", minutes=1))
    rig.clock.advance(200)
    await rig.deliver()
    assert [b["notices"][0]["event"] for b in rig.bodies("/hooks/toc")] == ["candidate"]
    reasons = {
        r["suppressed_reason"]
        for r in await rig.rows("SELECT suppressed_reason FROM notice WHERE event_kind = 'admit'")
    }
    assert reasons == {"admit_cancelled"}


async def test_past_the_hourly_limit_the_rest_go_as_one_digest(rig_factory: Any) -> None:
    rig: Rig = await rig_factory(max_per_hour=2)
    await enroll(rig, candidate("TOC"))
    await rig.deliver()
    for n in range(5):
        await feed_adt(rig, admission("A01", visit=f"R{n}", minutes=n))
    await rig.deliver()
    team = rig.bodies("/hooks/toc")
    # The candidate notice took the first slot of the hour; one is left, so the five
    # admissions go together in it.
    assert [len(b["notices"]) for b in team] == [1, 5]
    assert team[1]["digest"] is True and {n["event"] for n in team[1]["notices"]} == {"admit"}
    await feed_adt(rig, admission("A01", visit="R9", minutes=9))
    await rig.deliver()
    assert len(rig.bodies("/hooks/toc")) == 2  # the hour is used up: it waits
    (row,) = await rig.rows("SELECT deliver_after FROM notice WHERE status = 'pending'")
    assert row["deliver_after"] == NOW + dt.timedelta(hours=1)
    rig.clock.advance(3601)
    await rig.deliver()
    assert [len(b["notices"]) for b in rig.bodies("/hooks/toc")] == [1, 5, 1]


# --- delivery: retries, leases, dead letters ---------------------------------------------------


async def test_receiver_500_then_down_then_back_delivers_exactly_once(rig_factory: Any) -> None:
    rig: Rig = await rig_factory()
    await rig.feed(TOPICS.candidates, candidate("TOC"))
    rig.hooks.mode = "500"
    await rig.deliver()
    (row,) = await rig.rows("SELECT status, attempts, last_error, next_attempt_at FROM delivery")
    assert (row["status"], row["attempts"]) == ("queued", 1) and "500" in row["last_error"]
    assert NOW + dt.timedelta(seconds=0.5) <= row["next_attempt_at"] <= NOW + dt.timedelta(seconds=1)
    await rig.hooks.stop()  # down
    rig.clock.advance(2)
    await rig.deliver()
    (row,) = await rig.rows("SELECT status, attempts FROM delivery")
    assert (row["status"], row["attempts"]) == ("queued", 2)
    await rig.hooks.start()
    rig.clock.advance(5)
    await rig.deliver()
    assert len(rig.hooks.unique) == 1
    (row,) = await rig.rows("SELECT status, attempts FROM delivery")
    assert (row["status"], row["attempts"]) == ("delivered", 3)


async def test_a_slow_receiver_times_out_and_the_retry_is_deduped_by_key(rig_factory: Any) -> None:
    rig: Rig = await rig_factory()
    await rig.feed(TOPICS.candidates, candidate("TOC"))
    rig.hooks.slow_s = 1.5
    rig.hooks.mode = "slow"
    await rig.deliver()  # the channel gives up after 1 s; the receiver still takes it
    await rig.hooks.wait_for(1, timeout=5)
    rig.hooks.mode = "ok"
    rig.clock.advance(5)
    await rig.deliver()
    keys = [r.headers["idempotency-key"] for r in rig.hooks.requests]
    assert len(keys) == 2 and len(set(keys)) == 1 and len(rig.hooks.unique) == 1
    (row,) = await rig.rows("SELECT status FROM delivery")
    assert row["status"] == "delivered"


async def test_a_crash_between_sending_and_recording_resends_under_the_same_key(rig_factory: Any) -> None:
    rig: Rig = await rig_factory()
    await rig.feed(TOPICS.candidates, candidate("TOC"))
    await rig.dispatcher.plan_once()
    # Claimed and sent, then the process died: the outcome was never recorded.

    async with rig.engine.begin() as conn:
        (claimed,) = await store.claim_due(conn, rig.clock.now, 10, rig.cfg.retry.lease_s)
    channel = WebhookChannel(total_timeout=2, clock=lambda: rig.clock.now.timestamp())
    endpoint = endpoints_of(rig.cfg.care_teams[0], {"S": SECRET})["webhook"]

    await channel.send(
        Outbound(claimed.id, claimed.idempotency_key, endpoint, claimed.subject, claimed.content_type, claimed.body)
    )
    await channel.close()
    assert await rig.deliver() == 0  # leased: not due yet
    rig.clock.advance(rig.cfg.retry.lease_s + 1)
    assert await rig.deliver() == 1
    assert len(rig.hooks.requests) == 2 and len(rig.hooks.unique) == 1


async def test_a_refusal_goes_to_the_dead_letters_and_can_be_resent(rig_factory: Any) -> None:
    rig: Rig = await rig_factory()
    await rig.feed(TOPICS.candidates, candidate("TOC"))
    rig.hooks.mode = "404"
    await rig.deliver()
    (row,) = await rig.rows("SELECT id, status, attempts FROM delivery")
    assert (row["status"], row["attempts"]) == ("failed", 1)
    (dead,) = await rig.rows("SELECT reason, attempts FROM notifier_deadletter")
    assert "404" in dead["reason"]
    (out,) = await rig.rows("SELECT topic, key, payload FROM outbox")
    assert out["topic"] == TOPICS.deadletter and out["key"] == "toc-team"
    payload = json.loads(out["payload"])
    assert payload["delivery_id"] == str(row["id"]) and "C-55" not in out["payload"].decode()

    async with rig.engine.begin() as conn:
        assert await store.requeue(conn, row["id"], rig.clock.now)
        assert not await store.requeue(conn, row["id"], rig.clock.now)  # queued now, not failed
    rig.hooks.mode = "ok"
    await rig.deliver()
    (row,) = await rig.rows("SELECT status, attempts FROM delivery")
    assert (row["status"], row["attempts"]) == ("delivered", 1)


async def test_retries_stop_after_the_last_attempt(rig_factory: Any) -> None:
    rig: Rig = await rig_factory()
    await rig.feed(TOPICS.candidates, candidate("TOC"))
    rig.hooks.mode = "503"
    for _ in range(3):
        await rig.deliver()
        rig.clock.advance(10)
    (row,) = await rig.rows("SELECT status, attempts FROM delivery")
    assert (row["status"], row["attempts"]) == ("failed", 3)
    assert len(rig.hooks.requests) == 3


async def test_an_undecodable_record_is_kept_and_skipped(rig_factory: Any) -> None:
    rig: Rig = await rig_factory()
    await rig.handler.apply(TOPICS.candidates, b'{"not": "a candidate"}', partition=0, offset=7)
    (row,) = await rig.rows('SELECT topic, "offset" FROM undecodable_event')
    assert (row["topic"], row["offset"]) == (TOPICS.candidates, 7)
