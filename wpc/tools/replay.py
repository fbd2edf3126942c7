"""`wpc replay`: what a rule change would change, before it is made (dry-run by default).

It re-folds every stored encounter from its stored events (``encounter_event``, one row
per ADT event, the projection of the stored ADT messages) under the rules file given,
and reports:

* encounters whose classification (kind) or diagnosis flags change;
* for every person with a current encounter (ended within the rules'
  ``candidate_max_age_hours``, or still open), the program the new rules would
  propose now, beside the person's active candidate, if any.

``--apply`` writes the re-folded encounters (kind, flags, times) in one transaction;
it never creates or withdraws candidates: a rule change takes effect for events from
then on, and the care team acts on the report. Output is ids and counts, never PHI.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from enrollment_svc import eligibility, history
from enrollment_svc.model import Trigger
from enrollment_svc.rules import Rules, load_rules
from enrollment_svc.service import rules_of
from enrollment_svc.settings import EnrollmentSettings
from enrollment_svc.store import EnrollmentStore, event_from_body
from services import db
from services.runinfo import tool_database_url
from services.settings import load_settings


async def replay(conn: AsyncConnection, rules: Rules, now: dt.datetime, *, apply: bool) -> dict[str, Any]:
    store = EnrollmentStore(rules)
    changed_kind: Counter[str] = Counter()
    changed_flags = 0
    encounters = 0
    current: dict[uuid.UUID, Trigger] = {}
    horizon = now - dt.timedelta(hours=rules.candidate_max_age_hours)
    rows = await conn.stream(
        text(
            "SELECT e.id, e.facility, e.visit_number, e.person_id, e.kind, e.dx_flags, "
            "array_agg(v.body ORDER BY v.event_time) AS bodies, array_agg(v.trigger_event ORDER BY v.event_time) AS tr "
            "FROM encounter e JOIN encounter_event v ON v.encounter_id = e.id GROUP BY e.id"
        )
    )
    updates: list[tuple[uuid.UUID, Any, Any]] = []
    async for row in rows:
        encounters += 1
        state = history.fold(row.facility, row.visit_number, [event_from_body(b) for b in row.bodies])
        if state is None:
            continue
        facts = history.facts(str(row.id), state, rules)
        if facts.kind != row.kind:
            changed_kind[f"{row.kind}->{facts.kind}"] += 1
        if sorted(facts.dx_flags) != sorted(row.dx_flags):
            changed_flags += 1
        if facts.kind != row.kind or sorted(facts.dx_flags) != sorted(row.dx_flags):
            updates.append((row.id, state, facts))
        if state.end is None or state.end >= horizon:
            trigger = eligibility.trigger_for(row.tr[-1], facts, event_time=state.last_event_time)
            if trigger is not None:
                current[row.person_id] = trigger
    decisions: Counter[str] = Counter()
    differs: list[dict[str, str | None]] = []
    for person_id, trigger in current.items():
        person_history = await store.load_history(conn, person_id, trigger.at)
        evaluation = eligibility.evaluate(person_history, trigger, rules, now)
        # What the rules make of the person, blocks aside: `evaluate` lists decisions in priority order.
        proposed = next((d.program for d in evaluation.decisions if d.eligible), None)
        decisions[proposed or "none"] += 1
        if proposed != person_history.active_program:
            differs.append({"person_id": str(person_id), "would_propose": proposed,
                            "active_candidate": person_history.active_program})
    if apply:
        for encounter_id, state, facts in updates:
            await store.save_encounter(conn, encounter_id, state, facts)
    return {
        "rule_version": rules.rule_version,
        "dry_run": not apply,
        "encounters": encounters,
        "encounters_reclassified": dict(changed_kind),
        "encounters_with_changed_dx_flags": changed_flags,
        "persons_with_current_encounters": len(current),
        "eligible_now_by_program": dict(decisions),
        "differs_from_active_candidates": differs[:1000],
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rules", type=Path, help="rules file to try (default: WPC_RULES_FILE)")
    parser.add_argument("--apply", action="store_true", help="write the re-folded encounters (default: dry run)")


def run(args: argparse.Namespace) -> int:
    settings = load_settings(EnrollmentSettings)
    # WPC_DATABASE_URL, else the running `wpc up`'s database; none: ConfigError (exit 2)
    url = tool_database_url(settings.database_url, settings.data_dir)
    rules = load_rules(args.rules, setting="--rules") if args.rules else rules_of(settings)

    async def main() -> dict[str, Any]:
        engine = db.create_engine(url, pool_size=1)
        try:
            async with engine.begin() as conn:
                return await replay(conn, rules, dt.datetime.now(dt.UTC), apply=args.apply)
        finally:
            await engine.dispose()

    report = asyncio.run(main())
    print(json.dumps(report, indent=2))
    return 0
