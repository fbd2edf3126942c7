"""Persons and their identities: resolving, merging, linking, and reading what deciding needs.

A person is every identity (one hospital MRN with its assigning authority, keyed by the
listener's patient key) linked by Medi-Cal id, an explicit link, or an A40-family merge
(an identity merged away points at its survivor, ``identity.merged_into``; an MRN merged
before any event of its own is recorded so, and its events join the survivor). Two
persons becoming one bring their encounters, flags and candidates together; two
encounters of one facility and visit number then become one (`combine_visits`), as one
visit of one patient is one encounter.

The reads are what the use cases decide on: the window of history of the in-order path
(`history`), and the person's record for deciding again (`record`, `unfold`); and what the
care team's person page shows (`profile`).

Methods run in the caller's transaction, on the store's `Sql`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from typing import Any

from enrollment_svc import card, decide, history, merges
from enrollment_svc.candidates import Candidates
from enrollment_svc.model import EncounterFacts, Flag, PersonHistory
from enrollment_svc.rows import HISTORY_COLUMNS, SAVE_ENCOUNTER, encounter_params, event_from_body, json_value
from enrollment_svc.rules import Rules
from enrollment_svc.sql import Sql
from enrollment_svc.status import ACTIVE
from schemas.adt_event import Identifier

__all__ = ["Persons"]

_LOAD_HISTORY = f"SELECT {HISTORY_COLUMNS} FROM person h WHERE h.id = :p"

# An identity and every identity merged into it, directly or through others (A40 chains, and
# MRNs merged before their own events came: their encounters and flags keep their own key).
_MERGED_INTO = (
    "WITH RECURSIVE tree(key) AS (SELECT CAST(:k AS text) UNION "
    "SELECT i.key FROM identity i JOIN tree t ON i.merged_into = t.key) SELECT key FROM tree"
)

# A person's encounters in the window for deciding again (`_redecide`), with the events of
# those that may hold a current trigger (a time of theirs within ``candidate_max_age_hours``).
_RECORD_ENCOUNTERS = (
    "SELECT e.id, e.facility, e.visit_number, e.kind, e.status, e.start_at, e.end_at, e.dx_flags, e.last_event_time, "
    "CASE WHEN GREATEST(e.last_event_time, e.start_at, e.end_at) >= :recent "
    "THEN ARRAY(SELECT v.body FROM encounter_event v WHERE v.encounter_id = e.id) END AS bodies "
    "FROM encounter e WHERE e.person_id = :p AND e.start_at >= :since"
)


class Persons:
    """The persons' repository: identities, merges and links, and the reads of deciding."""

    def __init__(self, rules: Rules, candidates: Candidates) -> None:
        self.rules = rules
        self.candidates = candidates

    # --- what the care team reads ------------------------------------------------------------

    async def identifiers(self, db: Sql, person_id: uuid.UUID) -> list[dict[str, Any]]:
        """A person's identifiers (MRNs with their authority, merged ones too), oldest first."""
        rows = await db.fetch(
            "SELECT authority, value, type_code FROM identity WHERE person_id = :p ORDER BY created_at",
            {"p": person_id},
        )
        return [dict(r) for r in rows]

    async def encounters(self, db: Sql, person_id: uuid.UUID, limit: int = 500) -> list[dict[str, Any]]:
        """A person's encounters, newest first (at most ``limit``)."""
        rows = await db.fetch(
            "SELECT id, facility, visit_number, kind, status, patient_class, start_at, end_at, dx_flags "
            "FROM encounter WHERE person_id = :p ORDER BY start_at DESC LIMIT :n",
            {"p": person_id, "n": limit},
        )
        return [dict(r) for r in rows]

    async def flags(self, db: Sql, person_id: uuid.UUID) -> list[dict[str, Any]]:
        """A person's flags (partner systems' facts), newest first."""
        rows = await db.fetch(
            "SELECT id, kind, source, effective, until, detail FROM patient_flag WHERE person_id = :p "
            "ORDER BY effective DESC",
            {"p": person_id},
        )
        return [dict(r) for r in rows]

    # --- identities --------------------------------------------------------------------------

    async def resolve(
        self,
        db: Sql,
        key: str,
        ident: Identifier,
        authority: str,
        medi_cal_id: str | None,
        row: Any,
    ) -> tuple[uuid.UUID, bool]:
        """The person of an identity (``row``: its identity row, None when new), creating or
        linking (by Medi-Cal id) as needed; and whether two persons were merged for it.

        No lock is taken to create: two transactions creating the same identity or the same
        Medi-Cal person collide on a unique key, and the handler retries the loser, which then
        finds the winner's rows. Merging two persons locks both."""
        seen: set[str] = set()
        while row is not None and row["merged_into"] is not None and row["merged_into"] not in seen:
            seen.add(row["merged_into"])  # an A40-merged MRN: history lives with the survivor
            row = await db.row("SELECT person_id, merged_into FROM identity WHERE key = :k", {"k": row["merged_into"]})
        by_medi_cal: uuid.UUID | None = None
        if medi_cal_id:
            by_medi_cal = await db.scalar("SELECT id FROM person WHERE medi_cal_id = :m", {"m": medi_cal_id})
        found = merges.resolve(row["person_id"] if row is not None else None, by_medi_cal, medi_cal_id)
        if found.kind == "merge":
            # The same Medi-Cal id at two hospitals: one person (programs.md, identity across hospitals).
            assert found.person is not None and found.merge_from is not None
            for p in sorted((found.merge_from, found.person), key=str):
                await self.lock(db, p)
            await self.merge_persons(db, found.merge_from, found.person, actor="medi-cal-id",
                                     reason="same Medi-Cal id")
            return found.person, True
        if found.kind == "claim":
            await db.execute(
                "UPDATE person SET medi_cal_id = :m WHERE id = :p AND medi_cal_id IS NULL",
                {"m": medi_cal_id, "p": found.person},
            )
        if found.kind in ("known", "claim"):
            assert found.person is not None
            return found.person, False
        person_id = found.person or uuid.uuid4()
        if found.kind == "new":
            await db.execute("INSERT INTO person (id, medi_cal_id) VALUES (:p, :m)", {"p": person_id, "m": medi_cal_id})
        await db.execute(
            "INSERT INTO identity (key, person_id, authority, value, type_code) VALUES (:k, :p, :a, :v, :t)",
            {"k": key, "p": person_id, "a": authority, "v": ident.value, "t": ident.type_code},
        )
        # A new identity of a known person (same Medi-Cal id) joins it: no history to regroup,
        # and its events are late or not by the person's ``events_through``.
        return person_id, False

    async def lock(self, db: Sql, person_id: uuid.UUID) -> None:
        """Serialize deciding for one person: the person row's lock, held until commit (the
        UPDATE of the person in `apply_adt_event` takes the same lock for ADT events)."""
        await db.execute("SELECT 1 FROM person WHERE id = :p FOR UPDATE", {"p": person_id})

    async def merge_identity(
        self, db: Sql, prior_key: str, survivor_key: str, survivor_person: uuid.UUID,
        now: dt.datetime, *, actor: str, prior: Identifier, prior_authority: str,
    ) -> bool:
        """A40 (merge patient identifier list): the prior MRN's history moves to the survivor.

        A prior MRN not seen yet is recorded as merged already (an early merge): its events,
        whenever they come, join the survivor. True when the merge is new (not a redelivery).
        """
        row = await db.row("SELECT person_id, merged_into FROM identity WHERE key = :k", {"k": prior_key})
        merge = merges.identity_merge(
            row["person_id"] if row is not None else None, row["merged_into"] if row is not None else None,
            survivor_key, survivor_person,
        )
        if merge.kind == "redelivered":
            return False
        await db.execute(
            "INSERT INTO identity_link (action, key_a, key_b, actor, reason) VALUES ('merge', :a, :b, :who, 'A40')",
            {"a": prior_key, "b": survivor_key, "who": actor},
        )
        if merge.kind == "early":
            await db.execute(
                "INSERT INTO identity (key, person_id, authority, value, type_code, merged_into) "
                "VALUES (:k, :p, :a, :v, :t, :s)",
                {"k": prior_key, "p": survivor_person, "a": prior_authority, "v": prior.value,
                 "t": prior.type_code, "s": survivor_key},
            )
            return merge.regroups  # nothing of it is stored yet: nothing to decide again
        await db.execute("UPDATE identity SET merged_into = :s WHERE key = :k", {"s": survivor_key, "k": prior_key})
        prior_person: uuid.UUID = row["person_id"]
        if merge.other_person:
            await self.lock(db, prior_person)
        keys = [r["key"] for r in await db.fetch(_MERGED_INTO, {"k": prior_key})]
        moving = await db.fetch("SELECT id FROM encounter WHERE identity_key = ANY(:keys)", {"keys": keys})
        kept = await self._combine_visits(db, survivor_person, [r["id"] for r in moving])
        # Encounters keep their (facility, visit number) key, so moving them can never double count.
        await db.execute(
            "UPDATE encounter SET identity_key = :s, person_id = :p WHERE id = ANY(:ids)",
            {"s": survivor_key, "p": survivor_person, "ids": kept},
        )
        await db.execute(
            "UPDATE patient_flag SET identity_key = :s, person_id = :p WHERE identity_key = ANY(:keys)",
            {"s": survivor_key, "p": survivor_person, "keys": keys},
        )
        if merge.other_person:
            remaining = await db.scalar(
                "SELECT count(*) FROM identity WHERE person_id = :p AND merged_into IS NULL AND key <> :k",
                {"p": prior_person, "k": prior_key},
            )
            await db.execute(
                "UPDATE identity SET person_id = :s WHERE key = ANY(:keys)", {"s": survivor_person, "keys": keys}
            )
            await self.carry_events_through(db, prior_person, survivor_person)
            if merges.candidates_follow(int(remaining)):
                await self.candidates.move(db, prior_person, survivor_person, now, actor=actor)
        return merge.regroups

    async def merge_persons(
        self, db: Sql, from_person: uuid.UUID, into_person: uuid.UUID, *, actor: str, reason: str
    ) -> None:
        """One person of two (the caller holds both locks): identities, encounters, flags, candidates."""
        moving = await db.fetch("SELECT id FROM encounter WHERE person_id = :f", {"f": from_person})
        kept = await self._combine_visits(db, into_person, [r["id"] for r in moving])
        await db.execute("UPDATE encounter SET person_id = :i WHERE id = ANY(:ids)", {"i": into_person, "ids": kept})
        for table in ("identity", "patient_flag"):
            await db.execute(
                f"UPDATE {table} SET person_id = :i WHERE person_id = :f", {"i": into_person, "f": from_person}
            )
        await self.carry_events_through(db, from_person, into_person)
        # The card: the survivor's keys stand, the other's fill the gaps; the newer whereabouts win.
        await db.execute(
            "UPDATE person i SET card = f.card || i.card, card_at = GREATEST(i.card_at, f.card_at), "
            "whereabouts = CASE WHEN f.whereabouts_at > COALESCE(i.whereabouts_at, '-infinity') "
            "THEN f.whereabouts ELSE i.whereabouts END, "
            "whereabouts_at = GREATEST(i.whereabouts_at, f.whereabouts_at) FROM person f WHERE i.id = :i AND f.id = :f",
            {"i": into_person, "f": from_person},
        )
        await self.candidates.move(db, from_person, into_person, dt.datetime.now(dt.UTC), actor=actor)
        ids = {r["id"]: r["medi_cal_id"] for r in await db.fetch(
            "SELECT id, medi_cal_id FROM person WHERE id = ANY(:ps)", {"ps": [from_person, into_person]}
        )}
        if ids.get(from_person) is not None:
            # Medi-Cal ids are unique: the merged-away person lets go of its id first.
            await db.execute("UPDATE person SET medi_cal_id = NULL WHERE id = :f", {"f": from_person})
            kept_id = merges.medi_cal_after_merge(ids.get(into_person), ids.get(from_person))
            if kept_id != ids.get(into_person):
                await db.execute("UPDATE person SET medi_cal_id = :m WHERE id = :i", {"m": kept_id, "i": into_person})

    async def carry_events_through(self, db: Sql, from_person: uuid.UUID, into_person: uuid.UUID) -> None:
        await db.execute(
            "UPDATE person SET events_through = GREATEST(events_through, "
            "(SELECT events_through FROM person WHERE id = :f)) WHERE id = :i",
            {"f": from_person, "i": into_person},
        )

    async def _combine_visits(self, db: Sql, into_person: uuid.UUID, moving: list[uuid.UUID]) -> list[uuid.UUID]:
        """Of the encounters ``moving`` to ``into_person``, fold each one whose visit the person
        has already into that encounter (`merges.combine_visits`: the events of both, re-folded);
        the others are returned, to be moved."""
        rows = await db.fetch(
            "SELECT e.id, e.facility, e.visit_number, e.person_id = :i AS survivor FROM encounter e "
            "WHERE e.id = ANY(:ids) OR (e.person_id = :i AND (e.facility, e.visit_number) IN "
            "(SELECT m.facility, m.visit_number FROM encounter m WHERE m.id = ANY(:ids)))",
            {"i": into_person, "ids": moving},
        )
        visits = {r["id"]: merges.Visit(r["id"], r["facility"], r["visit_number"]) for r in rows}
        combined = merges.combine_visits(
            [visits[i] for i in moving if i in visits], [visits[r["id"]] for r in rows if r["survivor"]]
        )
        for gone, kept in combined.folded:
            ids = {"k": kept, "g": gone}
            await db.execute("UPDATE encounter_event SET encounter_id = :k WHERE encounter_id = :g", ids)
            await db.execute("UPDATE candidate SET encounter_id = :k WHERE encounter_id = :g", ids)
            await db.execute("DELETE FROM encounter WHERE id = :g", ids)
            await self._refold(db, kept)
        return list(combined.moved)

    async def _refold(self, db: Sql, encounter_id: uuid.UUID) -> None:
        row = await db.one(
            "SELECT facility, visit_number, ARRAY(SELECT body FROM encounter_event WHERE encounter_id = e.id) "
            "AS bodies FROM encounter e WHERE id = :e",
            {"e": encounter_id},
        )
        state = history.fold(row["facility"], row["visit_number"], map(event_from_body, row["bodies"]))
        if state is not None:
            await db.execute(
                SAVE_ENCOUNTER, encounter_params(encounter_id, state, history.facts(str(encounter_id), state,
                                                                                      self.rules))
            )

    async def history(self, db: Sql, person_id: uuid.UUID, since: dt.datetime, row: Any) -> PersonHistory:
        """The person's history from ``row`` (`_HISTORY_COLUMNS`, read already) or read now."""
        if row is None:
            row = await db.one(_LOAD_HISTORY, {"p": person_id, "active": list(ACTIVE), "since": since})
        encounters = tuple(
            EncounterFacts(
                id=str(e_id), facility=facility, visit_number=visit_number, kind=kind, status=status,
                start=start, end=end, dx_flags=frozenset(flags),
            )
            for e_id, facility, visit_number, kind, status, start, end, flags in row["encounters"]
        )
        flags: tuple[Flag, ...] = ()
        if row["has_flags"]:
            flags = tuple(
                Flag(
                    id=str(r["id"]), kind=r["kind"], source=r["source"], effective=r["effective"], until=r["until"],
                    detail=r["detail"],
                )
                for r in await db.fetch(
                    "SELECT id, kind, source, effective, until, detail FROM patient_flag "
                    "WHERE person_id = :p AND (effective >= :since OR until IS NULL OR until >= :since)",
                    {"p": person_id, "since": since},
                )
            )
        return PersonHistory(
            person_id=str(person_id),
            birth_date=row["birth_date"],
            medi_cal=row["medi_cal"],
            county_resident=row["county_resident"],
            encounters=encounters,
            flags=flags,
            active_program=row["active_program"],
        )

    async def record(self, db: Sql, person_id: uuid.UUID, now: dt.datetime) -> decide.PersonRecord:
        """The person as `decide.plan` reads it: encounters in the window (with their events when
        they may hold a current trigger), flags, candidates."""
        recent = now - dt.timedelta(hours=self.rules.candidate_max_age_hours)
        person = await db.one(
            "SELECT birth_date, medi_cal, county_resident FROM person WHERE id = :p", {"p": person_id}
        )
        encounters = tuple(
            decide.StoredEncounter(
                facts=EncounterFacts(
                    id=str(r["id"]), facility=r["facility"], visit_number=r["visit_number"], kind=r["kind"],
                    status=r["status"], start=r["start_at"], end=r["end_at"], dx_flags=frozenset(r["dx_flags"]),
                ),
                last_event_time=r["last_event_time"],
                events=tuple(map(event_from_body, r["bodies"])) if r["bodies"] is not None else None,
            )
            for r in await db.fetch(_RECORD_ENCOUNTERS, {
                "p": person_id, "since": recent - self.rules.longest_lookback(), "recent": recent,
            })
        )
        flags = tuple(
            decide.RecordedFlag(
                Flag(id=str(r["id"]), kind=r["kind"], source=r["source"], effective=r["effective"], until=r["until"],
                     detail=r["detail"]),
                r["recorded_at"],
            )
            for r in await db.fetch(
                "SELECT id, kind, source, effective, until, detail, recorded_at FROM patient_flag WHERE person_id = :p",
                {"p": person_id},
            )
        )
        candidates = tuple(
            decide.PastCandidate(
                id=str(r["id"]), program=r["program"], status=r["status"], status_reason=r["status_reason"],
                encounter_id=str(r["encounter_id"]) if r["encounter_id"] is not None else None,
                decision=json_value(r["decision"]), rule_version=r["rule_version"],
            )
            for r in await db.fetch(
                "SELECT id, program, status, status_reason, encounter_id, decision, rule_version FROM candidate "
                "WHERE person_id = :p ORDER BY seq",
                {"p": person_id},
            )
        )
        return decide.PersonRecord(
            person_id=str(person_id), birth_date=person["birth_date"], medi_cal=person["medi_cal"],
            county_resident=person["county_resident"], encounters=encounters, flags=flags, candidates=candidates,
        )

    async def unfold(self, db: Sql, record: decide.PersonRecord, ids: list[str]) -> decide.PersonRecord:
        """The record with the events of encounters ``ids`` loaded."""
        rows = await db.fetch(
            "SELECT encounter_id, array_agg(body) AS bodies FROM encounter_event WHERE encounter_id = ANY(:ids) "
            "GROUP BY encounter_id",
            {"ids": [uuid.UUID(i) for i in ids]},
        )
        events = {str(r["encounter_id"]): tuple(map(event_from_body, r["bodies"])) for r in rows}
        return dataclasses.replace(record, encounters=tuple(
            dataclasses.replace(s, events=events[s.facts.id]) if s.facts.id in events else s
            for s in record.encounters
        ))

    async def link(self, db: Sql, key_a: str, key_b: str, *, actor: str, reason: str) -> tuple[uuid.UUID, bool]:
        """Two identities as one person, recorded with who and why; the person, and whether two
        persons became one."""
        persons = []
        for key in (key_a, key_b):
            person = await db.scalar("SELECT person_id FROM identity WHERE key = :k", {"k": key})
            if person is None:
                raise LookupError("unknown identity")
            persons.append(person)
        for p in sorted(set(persons), key=str):
            await self.lock(db, p)
        if persons[0] != persons[1]:
            await self.merge_persons(db, persons[1], persons[0], actor=actor, reason=reason)
        await db.execute(
            "INSERT INTO identity_link (action, key_a, key_b, actor, reason) VALUES ('link', :a, :b, :w, :r)",
            {"a": key_a, "b": key_b, "w": actor, "r": reason},
        )
        survivor: uuid.UUID = persons[0]
        return survivor, persons[0] != persons[1]

    async def split(self, db: Sql, key: str, *, actor: str, reason: str) -> tuple[uuid.UUID, uuid.UUID]:
        """One identity off its person into a new person, with the MRNs merged into it (A40),
        their encounters and flags; (the person it left, the new person). Candidates stay."""
        person = await db.scalar("SELECT person_id FROM identity WHERE key = :k", {"k": key})
        if person is None:
            raise LookupError("unknown identity")
        await self.lock(db, person)
        new_person = uuid.uuid4()
        await db.execute("INSERT INTO person (id) VALUES (:p)", {"p": new_person})
        keys = [r["key"] for r in await db.fetch(_MERGED_INTO, {"k": key})]
        params = {"n": new_person, "keys": keys}
        await db.execute("UPDATE identity SET person_id = :n WHERE key = ANY(:keys)", params)
        await db.execute("UPDATE encounter SET person_id = :n WHERE identity_key = ANY(:keys)", params)
        await db.execute("UPDATE patient_flag SET person_id = :n WHERE identity_key = ANY(:keys)", params)
        await db.execute(
            "UPDATE person SET events_through = (SELECT max(last_event_time) FROM encounter WHERE person_id = :n) "
            "WHERE id = :n",
            {"n": new_person},
        )
        await db.execute(
            "INSERT INTO identity_link (action, key_a, key_b, actor, reason) VALUES ('unlink', :a, :a, :w, :r)",
            {"a": key, "w": actor, "r": reason},
        )
        left: uuid.UUID = person
        return left, new_person

    async def add_flag(self, db: Sql, key: str, flag: Flag, *, recorded_by: str, now: dt.datetime) -> uuid.UUID:
        """Record a partner system's fact for the person of ``key`` (locked); the person."""
        person_id: uuid.UUID | None = await db.scalar("SELECT person_id FROM identity WHERE key = :k", {"k": key})
        if person_id is None:
            raise LookupError("unknown identity")
        await self.lock(db, person_id)
        await db.execute(
            "INSERT INTO patient_flag (id, person_id, identity_key, kind, source, effective, until, detail, "
            "recorded_by, recorded_at) VALUES (:id, :p, :k, :kind, :src, :eff, :until, :detail, :by, :now)",
            {"id": uuid.UUID(flag.id), "p": person_id, "k": key, "kind": flag.kind, "src": flag.source,
             "eff": flag.effective, "until": flag.until, "detail": flag.detail, "by": recorded_by, "now": now},
        )
        # A flag takes its place in the order when recorded: an ADT event older than it is late.
        await db.execute(
            "UPDATE person SET events_through = GREATEST(events_through, :now) WHERE id = :p",
            {"now": now, "p": person_id},
        )
        return person_id

    async def profile(self, db: Sql, person_id: uuid.UUID, now: dt.datetime) -> dict[str, Any] | None:
        """Everything the care team's person page shows of one person (None: no such person):
        the card (`enrollment_svc.card`), where they are now, identities and the links made
        between them, the PCP and where it was learned, encounters across every hospital, flags.
        Facility names and their Part 2 mark come from the rules' facility registry."""
        person = await db.row(
            "SELECT id, medi_cal_id, birth_date, medi_cal, county_resident, primary_care, primary_care_at, "
            "card, card_at, whereabouts, whereabouts_at FROM person WHERE id = :p",
            {"p": person_id},
        )
        if person is None:
            return None
        identities = await db.fetch(
            "SELECT key, authority, value, type_code, merged_into, created_at FROM identity WHERE person_id = :p "
            "ORDER BY created_at, key",
            {"p": person_id},
        )
        names = {r["key"]: {"authority": r["authority"], "value": r["value"]} for r in identities}
        links = await db.fetch(
            "SELECT action, key_a, key_b, actor, reason, at FROM identity_link "
            "WHERE key_a = ANY(:keys) OR key_b = ANY(:keys) ORDER BY at, id",
            {"keys": list(names)},
        )
        encounters = await db.fetch(
            "SELECT id, facility, visit_number, kind, status, patient_class, hospital_service, start_at, end_at, "
            "dx_flags, diagnoses FROM encounter WHERE person_id = :p ORDER BY start_at DESC LIMIT 500",
            {"p": person_id},
        )
        flags = await db.fetch(
            "SELECT id, kind, source, effective, until, detail, recorded_at FROM patient_flag WHERE person_id = :p "
            "ORDER BY effective DESC",
            {"p": person_id},
        )
        registry = self.rules.site.facilities
        homeless = self.rules.value_sets["homelessness"]

        def facility(fid: str) -> dict[str, Any]:
            known = registry.get(fid)
            return {"id": fid, "name": known.name if known and known.name else fid,
                    "part2": bool(known and known.part2)}

        encounter_rows = [
            {"id": str(e["id"]), "facility": facility(e["facility"]), "visit_number": e["visit_number"],
             "kind": e["kind"], "status": e["status"], "patient_class": e["patient_class"],
             "hospital_service": e["hospital_service"], "start_at": e["start_at"], "end_at": e["end_at"],
             "dx_flags": list(e["dx_flags"]), "diagnoses": list(e["diagnoses"]),
             # Which of the rules' value sets each code belongs to: what a criterion's evidence names.
             "dx_sets": {name: codes for name, vs in self.rules.value_sets.items()
                         if (codes := [c for c in e["diagnoses"] if vs.matches(c)])}}
            for e in encounters
        ]
        flag_rows = [{**dict(f), "id": str(f["id"])} for f in flags]
        card_body = json_value(person["card"]) or {}
        where = json_value(person["whereabouts"])
        if where is not None:
            where = {**where, "facility": facility(where["facility"]), "at": person["whereabouts_at"]}
        primary_care = json_value(person["primary_care"]) or []
        return {
            "person_id": str(person_id),
            "name": card_body.get("name"),
            "birth_date": person["birth_date"],
            "phone": card_body.get("phone"),
            "address": card_body.get("address"),
            "card_at": person["card_at"],
            "housing": card.housing(
                card_body.get("address"),
                [{"encounter_id": e["id"], "facility": e["facility"], "start_at": e["start_at"],
                  "codes": [c for c in e["diagnoses"] if homeless.matches(c)]}
                 for e in encounter_rows if "homelessness" in e["dx_flags"]],
                [f for f in flag_rows if f["kind"] == "homelessness"],
                now,
            ),
            "where": where,
            "medi_cal_id": person["medi_cal_id"],
            "medi_cal": person["medi_cal"],
            "county_resident": person["county_resident"],
            "primary_care": {
                "providers": primary_care,
                # PD1-4 or ROL (role PP) of an ADT message, stated at this event time; the health
                # plan roster, the other source, is the notifier's (its PCP notices name the practice).
                "sources": sorted({p.get("source") for p in primary_care if p.get("source")}),
                "stated_at": person["primary_care_at"],
            },
            "identities": [
                {"authority": r["authority"], "value": r["value"], "type_code": r["type_code"],
                 "merged_into": names.get(r["merged_into"]) if r["merged_into"] else None,
                 "created_at": r["created_at"]}
                for r in identities
            ],
            "links": [
                {"action": r["action"], "a": names.get(r["key_a"]), "b": names.get(r["key_b"]), "actor": r["actor"],
                 "reason": r["reason"], "at": r["at"]}
                for r in links
            ],
            "encounters": encounter_rows,
            "flags": flag_rows,
        }
