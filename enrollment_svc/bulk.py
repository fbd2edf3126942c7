"""A consumer batch of `adt.events` applied as sets: a few statements per batch, not per event.

Applied one at a time, an event costs a few round trips and a transaction share, and the
service's one core is spent on the driver's per-statement work. Here a batch costs about
ten statements in one transaction (a few more per person decided and per candidate made),
whatever its size: a county's archive (`wpc import`), the catch-up after an outage, and a
live county's traffic alike.

Which events go this way (`route`, pure) — everything else is left to the per-event path,
which runs after this one, in its own transactions, with its retries and parking:

* never a merge trigger (A18, A34, A40, A47), which regroups a person's history;
* its identity is known and not merged away, and any Medi-Cal id it carries is its
  person's already; or the identity is new, and every event of it in the batch carries
  the same Medi-Cal id (or none): it joins that Medi-Cal id's person or makes a new one,
  as `Persons.resolve` does;
* and either history: all of its person's events in the batch are older than the cutoff
  (now − ``candidate_max_age_hours``: by their own times, or they concern no encounter)
  and the person has nothing current (no encounter with a time after the cutoff, no flag
  recorded after it): with no current trigger before and none after, deciding the person
  again (`store._redecide`) changes nothing, and an in-order trigger older than the cutoff
  proposes nothing, so nothing is decided;
* or the person's only event in the batch, in order (not older than the newest event the
  person has, ``events_through``): its own trigger is decided as the per-event path
  decides an in-order event (`EnrollmentStore.decide_in_order`), on the person's window of
  history read in this transaction after the batch's rows were written (one statement for
  every person decided), with the candidates it makes written here too.
* A person is applied one way or the other, never split within a call. `apply_batch` then
  takes the patients left with several current events in rounds: the n-th round applies
  each one's n-th event as above, on what the rounds before wrote, in the same
  transaction; a patient with an event left out of a round (late, say) has the rest of
  its events left to the per-event path, in order.

What is written is what the per-event path writes: the ``processed_event`` row of each
event (dedupe, set-based: a redelivered event is skipped), new persons and identities,
each event's person facts (the per-event UPDATE, newest fact wins, run for each event in
order in one pipelined round trip), the encounters folded from their stored events and
the batch's (`history.fold` is order-independent and dedupes by event id), their events,
the feed findings (clock ahead, visit number reused), and for each decision its candidate
and outbox records. Candidates of different patients are made in the order of the rounds,
which may differ from the batch's order between patients; the per-event path gives that
order no meaning either (its lanes apply patients concurrently).

Anything unexpected found on the way raises `NotInBulk`; the caller rolls back and applies
the batch one event at a time. So does any failure, a poison record among them: one
transaction, nothing kept, then the per-event path parks the poison one and applies the
others once. (With `apply_batch`'s ``checkpoint``, the first set and the rounds are two
transactions: a failure in the rounds leaves the first set applied and only the rounds'
events to the per-event path.)
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

from enrollment_svc import eligibility, findings, history
from enrollment_svc.model import EncounterEvent, EncounterFacts, Trigger
from enrollment_svc.rows import SAVE_ENCOUNTER, encounter_params, event_body, event_from_body, history_columns
from enrollment_svc.rules import Rules
from enrollment_svc.sql import Sql
from enrollment_svc.status import ACTIVE
from enrollment_svc.store import UPDATE_PERSON, Applied, EnrollmentStore, identity_of, stated_time
from schemas.adt_event import AdtEventV1, Identifier

__all__ = ["BulkResult", "Item", "KnownIdentity", "KnownPerson", "NotInBulk", "Routing", "apply_batch", "apply_bulk",
           "item_of", "route"]


class NotInBulk(Exception):
    """The batch holds something the bulk path does not decide: apply it one event at a time."""


@dataclasses.dataclass(frozen=True, slots=True)
class Item:
    """One decoded event, as the bulk path reads it."""

    event: AdtEventV1
    key: str
    first: Identifier | None
    authority: str
    usable: bool  # production (MSH-11 P) with an identifier: it builds history
    ev: EncounterEvent | None  # what it says of its encounter, if anything
    stated_at: dt.datetime | None

    @property
    def medi_cal_id(self) -> str | None:
        return self.event.patient.medi_cal_id or None

    def historical(self, cutoff: dt.datetime) -> bool:
        """Whether the event may go in bulk by its own content (module docstring)."""
        if self.event.trigger_event in history.MERGE_TRIGGERS:
            return False
        if not self.usable or self.ev is None:
            return True
        return _latest(self.ev) < cutoff


def _latest(ev: EncounterEvent) -> dt.datetime:
    """The latest time of an encounter event: every start, end and trigger time comes from these."""
    return max(t for t in (ev.event_time, ev.admit_time, ev.discharge_time) if t is not None)


def item_of(event: AdtEventV1, rules: Rules) -> Item:
    zone = rules.site.zone()
    key, first, authority = identity_of(event)
    return Item(event=event, key=key, first=first, authority=authority,
                usable=event.processing_id == "P" and first is not None,
                ev=history.encounter_event(event, zone), stated_at=stated_time(event, zone))


@dataclasses.dataclass(frozen=True, slots=True)
class KnownIdentity:
    person_id: uuid.UUID
    merged_into: str | None


@dataclasses.dataclass(frozen=True, slots=True)
class KnownPerson:
    medi_cal_id: str | None
    current: bool  # an encounter time or a flag newer than the cutoff: it may have a current trigger
    events_through: dt.datetime | None = None  # the newest event time applied (`store._PERSON_FACTS`)

    def late(self, item: Item) -> bool:
        """Whether ``item`` is older than an event the person has (the per-event path's ``late``)."""
        event_time = item.ev.event_time if item.ev is not None else None
        return self.events_through is not None and event_time is not None and self.events_through > event_time


@dataclasses.dataclass(frozen=True)
class Routing:
    """Which items go in bulk (indices, in order) and the persons they fold into."""

    bulk: list[int]
    person_of: dict[int, uuid.UUID]  # the usable items in bulk
    new_persons: dict[uuid.UUID, str | None]  # id → Medi-Cal id
    new_identities: dict[str, int]  # key → index of its first item (the identifier recorded)
    deciding: frozenset[int] = frozenset()  # a person's one event in order: its own trigger is decided


def route(
    items: Sequence[Item],
    cutoff: dt.datetime,
    identities: Mapping[str, KnownIdentity],
    persons: Mapping[uuid.UUID, KnownPerson],
    by_medi_cal: Mapping[str, uuid.UUID],
    new_id: Callable[[], uuid.UUID] = uuid.uuid4,
) -> Routing:
    """Pure: the items that may be applied as a set (module docstring), given what the
    database holds of their identities and persons (``persons``: locked by the caller)."""
    by_key: dict[str, list[int]] = {}
    for i, item in enumerate(items):
        if item.usable:
            by_key.setdefault(item.key, []).append(i)
    excluded_keys: set[str] = set()
    excluded_medi_cal: set[str] = set()
    key_person: dict[str, uuid.UUID] = {}
    new_persons: dict[uuid.UUID, str | None] = {}
    new_identities: dict[str, int] = {}
    for key, indices in by_key.items():
        if any(items[i].event.trigger_event in history.MERGE_TRIGGERS for i in indices):
            excluded_keys.add(key)  # a merge regroups history: one event at a time
            continue
        ids = {items[i].medi_cal_id for i in indices}
        known = identities.get(key)
        if known is not None:
            holder = persons.get(known.person_id)
            if (known.merged_into is not None or holder is None
                    or any(m is not None and m != holder.medi_cal_id for m in ids)):
                excluded_keys.add(key)  # a merged MRN, or a Medi-Cal id that may join two persons
                continue
            key_person[key] = known.person_id
            continue
        if len(ids) > 1:
            excluded_keys.add(key)  # a Medi-Cal id stated by some of its events only, or two of them
            continue
        (medi_cal,) = ids
        found = by_medi_cal.get(medi_cal) if medi_cal is not None else None
        if found is None and medi_cal is not None:
            found = next((p for p, m in new_persons.items() if m == medi_cal), None)
        if found is None:
            found = new_id()
            new_persons[found] = medi_cal
        elif found not in new_persons and found not in persons:
            excluded_keys.add(key)  # not locked: leave it to the per-event path
            continue
        key_person[key] = found
        new_identities[key] = indices[0]
    for key in excluded_keys:
        excluded_medi_cal |= {m for i in by_key.get(key, ()) if (m := items[i].medi_cal_id) is not None}
    excluded_persons = {p for key, p in key_person.items()
                        if any(items[i].medi_cal_id in excluded_medi_cal for i in by_key[key])}
    # A person with an excluded key (known: by its identity) goes wholly one event at a time.
    excluded_persons |= {identities[k].person_id for k in excluded_keys if k in identities}
    of_person: dict[uuid.UUID, list[int]] = {}
    for key, person in key_person.items():
        of_person.setdefault(person, []).extend(by_key[key])
    deciding: set[int] = set()
    for person, indices in of_person.items():
        if person in excluded_persons:
            continue
        known_person = persons.get(person)  # None: made here
        if all(items[i].historical(cutoff) for i in indices) and (known_person is None or not known_person.current):
            continue  # history of a person with nothing current: nothing to decide
        if len(indices) == 1 and (known_person is None or not known_person.late(items[indices[0]])):
            deciding.add(indices[0])  # its own trigger, decided as the per-event path decides it
            continue
        excluded_persons.add(person)  # several events, or a late one: one at a time, decided again
    bulk: list[int] = []
    person_of: dict[int, uuid.UUID] = {}
    for i, item in enumerate(items):
        if not item.usable:
            bulk.append(i)  # a training or debugging message: marked processed, nothing else
            continue
        owner = key_person.get(item.key)
        if owner is None or owner in excluded_persons:
            continue
        bulk.append(i)
        person_of[i] = owner
    used = set(person_of.values())
    return Routing(
        bulk=bulk,
        person_of=person_of,
        new_persons={p: m for p, m in new_persons.items() if p in used},
        new_identities={k: i for k, i in new_identities.items() if key_person[k] in used},
        deciding=frozenset(deciding),
    )


@dataclasses.dataclass(frozen=True)
class BulkResult:
    handled: list[int]  # indices of the items applied here (duplicates included)
    applied: int
    duplicates: int
    encounters: int
    decided: dict[int, Applied] = dataclasses.field(default_factory=dict)  # item → its decision


# --- statements ------------------------------------------------------------------------

# Lock the persons of the batch's identities and Medi-Cal ids first, in one order (two
# instances lock in the same order); every read of their state comes in later statements.
# (``id = ANY(ARRAY(...))``: a condition on the primary key. With ``id IN (...) OR medi_cal_id
# = ANY(...)`` the planner scans the whole person table.)
_LOCK = (
    "SELECT id FROM person WHERE id = ANY(ARRAY(SELECT person_id FROM identity WHERE key = ANY(:keys) "
    "UNION SELECT id FROM person WHERE medi_cal_id = ANY(:mcs))) ORDER BY id FOR UPDATE"
)
_IDENTITIES = "SELECT key, person_id, merged_into FROM identity WHERE key = ANY(:keys)"
# A person with an encounter time or a flag after the cutoff may have a current trigger
# (`decide.current_triggers` reads encounters by the same three times, flags by recorded_at).
# (Subqueries with LIMIT 1, not EXISTS: for EXISTS the planner may build a hash of every
# current encounter of everyone, a scan of the whole table per batch; these look up each
# person's own rows by index.)
_PERSONS = (
    "SELECT p.id, p.medi_cal_id, p.events_through, (SELECT true FROM encounter e WHERE e.person_id = p.id "
    "AND GREATEST(e.start_at, e.end_at, e.last_event_time) >= :cutoff LIMIT 1) IS NOT NULL "
    "OR (SELECT true FROM patient_flag f WHERE f.person_id = p.id AND f.recorded_at >= :cutoff LIMIT 1) "
    "IS NOT NULL AS current FROM person p WHERE p.id = ANY(:ids)"
)
_MARK = (
    "INSERT INTO processed_event (event_id) SELECT unnest(CAST(:ids AS uuid[])) ON CONFLICT DO NOTHING "
    "RETURNING event_id"
)
_NEW_PERSONS = "INSERT INTO person (id, medi_cal_id) SELECT * FROM unnest(CAST(:ids AS uuid[]), CAST(:mcs AS text[]))"
_NEW_IDENTITIES = (
    "INSERT INTO identity (key, person_id, authority, value, type_code) SELECT * FROM unnest("
    "CAST(:k AS text[]), CAST(:p AS uuid[]), CAST(:a AS text[]), CAST(:v AS text[]), CAST(:t AS text[]))"
)
# Every encounter of the batch's (facility, visit number) pairs, whoever's, with its events;
# looked up pair by pair in the (facility, visit_number, person_id) index (``LATERAL ... OFFSET
# 0``: a subquery the planner keeps, run for each row of the batch). As a plain join of a few
# hundred pairs the planner hashes them and scans the whole table, every batch: cheap in its
# estimate while the table is young, and growing with it.
_ENCOUNTERS = (
    "SELECT e.id, e.facility, e.visit_number, e.person_id, "
    "ARRAY(SELECT v.body FROM encounter_event v WHERE v.encounter_id = e.id) AS bodies "
    "FROM unnest(CAST(:f AS text[]), CAST(:v AS text[])) AS k(f, v) CROSS JOIN LATERAL "
    "(SELECT id, facility, visit_number, person_id FROM encounter WHERE facility = k.f AND visit_number = k.v "
    "OFFSET 0) AS e"
)
_INSERT_ENCOUNTER = (
    "INSERT INTO encounter (id, facility, visit_number, identity_key, person_id, kind, status, patient_class, "
    "hospital_service, start_at, end_at, dx_flags, diagnoses, last_event_time) "
    "VALUES (:id, :f, :v, :k, :p, :kind, :status, :pc, :hs, :start, :end, :flags, :dx, :t)"
)
_INSERT_EVENTS = (
    "INSERT INTO encounter_event (event_id, encounter_id, trigger_event, event_time, body) "
    "SELECT e, n, tr, t, CAST(b AS jsonb) FROM unnest(CAST(:e AS uuid[]), CAST(:n AS uuid[]), CAST(:tr AS text[]), "
    "CAST(:t AS timestamptz[]), CAST(:b AS text[])) AS x(e, n, tr, t, b) ON CONFLICT DO NOTHING"
)


@dataclasses.dataclass
class _Visit:
    """One (facility, visit number, person) of the batch: its stored encounter, if any, and new events."""

    facility: str
    visit_number: str
    person: uuid.UUID
    first: int  # the item that opens it, when new
    events: list[EncounterEvent]
    stored_id: uuid.UUID | None = None
    stored: tuple[EncounterEvent, ...] = ()


async def _load(db: Sql, items: Sequence[Item], cutoff: dt.datetime) -> Routing:
    keys = sorted({it.key for it in items if it.usable})
    mcs = sorted({m for it in items if it.usable and (m := it.medi_cal_id) is not None})
    async with db.planned_per_call():
        locked = [r["id"] for r in await db.fetch(_LOCK, {"keys": keys, "mcs": mcs})]
        identities = {r["key"]: KnownIdentity(r["person_id"], r["merged_into"])
                      for r in await db.fetch(_IDENTITIES, {"keys": keys})}
        known = await db.fetch(_PERSONS, {"ids": locked, "cutoff": cutoff})
    persons: dict[uuid.UUID, KnownPerson] = {}
    by_medi_cal: dict[str, uuid.UUID] = {}
    for r in known:
        persons[r["id"]] = KnownPerson(r["medi_cal_id"], r["current"], r["events_through"])
        if r["medi_cal_id"] is not None:
            by_medi_cal[r["medi_cal_id"]] = r["id"]
    return route(items, cutoff, identities, persons, by_medi_cal)


async def apply_bulk(db: Sql, store: EnrollmentStore, items: Sequence[Item], now: dt.datetime) -> BulkResult:
    """Apply what may go in bulk of ``items`` (in the caller's transaction); the rest is the
    caller's to apply one at a time. Raises `NotInBulk` or any error
    of the database: the caller rolls back."""
    rules = store.rules
    cutoff = now - dt.timedelta(hours=rules.candidate_max_age_hours)
    routing = await _load(db, items, cutoff)
    if not routing.bulk:
        return BulkResult([], 0, 0, 0)
    fresh_ids = {r["event_id"] for r in await db.fetch(
        _MARK, {"ids": [items[i].event.event_id for i in routing.bulk]})}
    fresh: list[int] = []
    for i in routing.bulk:
        event_id = items[i].event.event_id
        if event_id in fresh_ids:
            fresh.append(i)
            fresh_ids.discard(event_id)  # a copy later in the batch is a duplicate
    applying = [i for i in fresh if i in routing.person_of]
    await _new_persons(db, items, routing, set(applying))
    await _person_facts(db, store, items, routing, applying)
    await _clock_findings(db, rules, items, applying)
    folded: dict[int, tuple[uuid.UUID, EncounterFacts]] = {}
    encounters = await _encounters(db, rules, items, routing, applying, cutoff, folded)
    decided = await _decide(db, store, items, routing, folded, now)
    return BulkResult(routing.bulk, len(fresh), len(routing.bulk) - len(fresh), encounters, decided)


async def apply_batch(
    db: Sql, store: EnrollmentStore, items: Sequence[Item], now: dt.datetime, *, round_min: int = 8,
    checkpoint: Callable[[BulkResult], Awaitable[None]] | None = None,
) -> BulkResult:
    """Apply what may go as sets of a consumer batch (in the caller's transaction): first the
    whole batch (`apply_bulk`: history, and each person's one event), then the patients with
    several current events in rounds, the n-th round their n-th events (each round a set of
    one event per person, deciding on what the rounds before it wrote), for as long as a
    round holds at least ``round_min`` events. A key with an event left out of a round has
    its later ones left out too: what is left goes to the per-event path in order.

    ``checkpoint``: called with the first set's result between it and the rounds, when there
    are rounds; the caller commits there and goes on in a new transaction, so the candidates
    of the first set (most of a batch's: a person's one event) are visible, and published,
    without waiting for the rounds. Each transaction holds its events' ``processed_event``
    rows: if the rounds fail, what the first set applied stays applied, once."""
    first = await apply_bulk(db, store, items, now)
    handled = set(first.handled)
    applied, duplicates, encounters = first.applied, first.duplicates, first.encounters
    decided = dict(first.decided)
    # Each patient's (key's) events not applied yet, in batch order; the others of this batch
    # (training messages, no identifier) were all applied above.
    queues: dict[str, list[int]] = {}
    for i, item in enumerate(items):
        if i not in handled and item.usable:
            queues.setdefault(item.key, []).append(i)
    checkpointed = checkpoint is None
    while True:
        batch_round = [indices[0] for indices in queues.values() if indices]
        if len(batch_round) < max(round_min, 1):
            break
        if not checkpointed:
            assert checkpoint is not None
            await checkpoint(first)
            checkpointed = True
        batch_round.sort()
        result = await apply_bulk(db, store, [items[i] for i in batch_round], now)
        done = {batch_round[j] for j in result.handled}
        for i in batch_round:
            key = items[i].key
            if i in done:
                queues[key].pop(0)
            else:
                queues[key] = []  # left to the per-event path, with every later event of its key
        handled |= done
        applied, duplicates = applied + result.applied, duplicates + result.duplicates
        encounters += result.encounters
        decided.update((batch_round[j], one) for j, one in result.decided.items())
    return BulkResult(sorted(handled), applied, duplicates, encounters, decided)


async def _new_persons(db: Sql, items: Sequence[Item], routing: Routing, applying: set[int]) -> None:
    made = {routing.person_of[i] for i in applying}
    persons = [(p, m) for p, m in routing.new_persons.items() if p in made]
    if persons:
        await db.execute(_NEW_PERSONS, {"ids": [p for p, _ in persons], "mcs": [m for _, m in persons]})
    identities = [(k, i) for k, i in routing.new_identities.items() if routing.person_of[i] in made]
    if identities:
        firsts = [items[i] for _, i in identities]
        await db.execute(_NEW_IDENTITIES, {
            "k": [k for k, _ in identities], "p": [routing.person_of[i] for _, i in identities],
            "a": [it.authority for it in firsts], "v": [it.first.value if it.first else "" for it in firsts],
            "t": [it.first.type_code if it.first else None for it in firsts],
        })


async def _person_facts(
    db: Sql, store: EnrollmentStore, items: Sequence[Item], routing: Routing, applying: list[int]
) -> None:
    """Each event's person facts by the per-event UPDATE, in batch order, in one pipelined
    round trip: the newest fact wins exactly as one by one (`person_rows`)."""
    updates = []
    for i in applying:
        it = items[i]
        event_time = it.ev.event_time if it.ev is not None else None
        updates.append((routing.person_of[i], store.person_params(it.event), it.stated_at, event_time))
    await db.execute_many(UPDATE_PERSON, person_rows(updates))


def person_rows(
    updates: Iterable[tuple[uuid.UUID, dict[str, Any], dt.datetime | None, dt.datetime | None]],
) -> list[dict[str, Any]]:
    """The rows of `store.UPDATE_PERSON` for (person, facts, stated at, event time) in order,
    a person's run of events stating the same facts as one row at the run's latest times.

    Exact: for one value, that UPDATE keeps the stored one or takes the new one and its time
    by comparing times only, so applying it at t1 then t2 ends as applying it once at
    max(t1, t2) (the card too: ``card || new`` and ``new || card`` agree once ``new`` is
    merged in). Only a person's own consecutive events are joined, so the order of
    different values is kept."""
    rows: list[dict[str, Any]] = []
    last: dict[uuid.UUID, dict[str, Any]] = {}
    for person, facts, stated_at, event_time in updates:
        row = last.get(person)
        if row is not None and all(row[name] == value for name, value in facts.items()):
            row["t"] = _later(row["t"], stated_at)
            row["et"] = _later(row["et"], event_time)
            continue
        last[person] = row = {**facts, "t": stated_at, "et": event_time, "p": person}
        rows.append(row)
    return rows


def _later(a: dt.datetime | None, b: dt.datetime | None) -> dt.datetime | None:
    """The later of two times, None being no time (SQL's GREATEST)."""
    return b if a is None else a if b is None else max(a, b)


async def _clock_findings(db: Sql, rules: Rules, items: Sequence[Item], applying: Iterable[int]) -> None:
    zone = rules.site.zone()
    margin = dt.timedelta(minutes=rules.site.clock_ahead_margin_minutes)
    found = []
    for i in applying:
        it = items[i]
        received_at = history.to_utc(it.event.received_at, zone)
        assert received_at is not None  # a required field of adt.events
        if findings.clock_ahead(it.stated_at, received_at, margin):
            found.append((it.event.sending_facility, findings.CLOCK_AHEAD, it.key, received_at))
    await findings.count_all(db, found)


async def _encounters(
    db: Sql, rules: Rules, items: Sequence[Item], routing: Routing, applying: list[int], cutoff: dt.datetime,
    folded: dict[int, tuple[uuid.UUID, EncounterFacts]],
) -> int:
    """Fold the batch's encounter events with the stored ones, and save encounters and events;
    put the encounter (id, facts) of each deciding item in ``folded``."""
    visits: dict[tuple[str, str, uuid.UUID], _Visit] = {}
    for i in applying:
        it = items[i]
        ev, pv1 = it.ev, it.event.visit
        if ev is None or pv1 is None or pv1.visit_number is None:
            continue
        # `history.encounter_event` makes an event of the triggers `history.fold` replays only,
        # so the event folds alone: the per-event path stores each of these.
        facility, number = it.event.sending_facility, pv1.visit_number
        person = routing.person_of[i]
        visits.setdefault((facility, number, person), _Visit(facility, number, person, i, [])).events.append(ev)
    if not visits:
        return 0
    pairs = sorted({(f, v) for f, v, _ in visits})
    owners: dict[tuple[str, str], set[uuid.UUID]] = {}
    async with db.planned_per_call():
        stored = await db.fetch(_ENCOUNTERS, {"f": [f for f, _ in pairs], "v": [v for _, v in pairs]})
    for r in stored:
        owners.setdefault((r["facility"], r["visit_number"]), set()).add(r["person_id"])
        visit_of = visits.get((r["facility"], r["visit_number"], r["person_id"]))
        if visit_of is not None:
            visit_of.stored_id = r["id"]
            visit_of.stored = tuple(map(event_from_body, r["bodies"]))
    inserts, updates, event_rows = [], [], []
    reused: list[tuple[str, str, str, dt.datetime]] = []
    for visit in visits.values():
        deciding = visit.first in routing.deciding  # the person's one event: the visit's only new one
        if not deciding and any(_latest(e) >= cutoff for e in visit.stored):
            raise NotInBulk("a stored event of the encounter is current")
        state = history.fold(visit.facility, visit.visit_number, [*visit.stored, *visit.events])
        if state is None:  # unreachable: its new events fold alone
            raise NotInBulk("an encounter that does not fold")
        encounter_id = visit.stored_id or uuid.uuid4()
        facts = history.facts(str(encounter_id), state, rules)
        if deciding:
            folded[visit.first] = (encounter_id, facts)
        params = encounter_params(encounter_id, state, facts)
        if visit.stored_id is None:
            first = items[visit.first]
            inserts.append({**params, "f": visit.facility, "v": visit.visit_number, "k": first.key,
                            "p": visit.person})
            others = owners.setdefault((visit.facility, visit.visit_number), set())
            if others - {visit.person}:  # the number is another person's already: the sender reused it
                assert first.ev is not None
                reused.append((visit.facility, findings.VISIT_REUSED, first.key, first.ev.received_at))
            others.add(visit.person)
        else:
            updates.append(params)
        event_rows += [(e, encounter_id) for e in visit.events]
    await db.execute_many(_INSERT_ENCOUNTER, inserts)
    await db.execute_many(SAVE_ENCOUNTER, updates)
    await findings.count_all(db, reused)
    await db.execute(_INSERT_EVENTS, {
        "e": [uuid.UUID(e.event_id) for e, _ in event_rows], "n": [n for _, n in event_rows],
        "tr": [e.trigger for e, _ in event_rows], "t": [e.event_time for e, _ in event_rows],
        "b": [event_body(e) for e, _ in event_rows],
    })
    return len(visits)


# Each person by its key, as `_ENCOUNTERS` looks up encounters.
_HISTORIES = (
    f"SELECT h.id AS history_of, {history_columns('w.since')} FROM unnest(CAST(:ids AS uuid[]), "
    "CAST(:sinces AS timestamptz[])) AS w(id, since) CROSS JOIN LATERAL "
    "(SELECT id, birth_date, medi_cal, county_resident FROM person WHERE id = w.id OFFSET 0) AS h"
)


async def _decide(
    db: Sql, store: EnrollmentStore, items: Sequence[Item], routing: Routing,
    folded: Mapping[int, tuple[uuid.UUID, EncounterFacts]], now: dt.datetime,
) -> dict[int, Applied]:
    """Decide each deciding item's own trigger as the per-event path does in order
    (`EnrollmentStore.decide_in_order`): the persons' windows of history in one statement,
    then, in batch order, each evaluation and the candidates it makes."""
    wants: list[tuple[int, uuid.UUID, uuid.UUID, EncounterFacts, Trigger]] = []
    for i in sorted(folded):
        encounter_id, facts = folded[i]
        ev = items[i].ev
        assert ev is not None  # it folded
        trigger = eligibility.trigger_for(items[i].event.trigger_event, facts, event_time=ev.event_time)
        if trigger is not None:
            wants.append((i, routing.person_of[i], encounter_id, facts, trigger))
    if not wants:
        return {}
    lookback = store.rules.longest_lookback()
    async with db.planned_per_call():
        rows = {r["history_of"]: r for r in await db.fetch(_HISTORIES, {
            "ids": [person for _, person, _, _, _ in wants],
            "sinces": [trigger.at - lookback for *_, trigger in wants],
            "active": list(ACTIVE),
        })}
    return {i: await store.decide_in_order(db, person, trigger, now, encounter_id, facts, rows[person])
            for i, person, encounter_id, facts, trigger in wants}
