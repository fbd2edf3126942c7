"""Rows of the enrollment tables and the values of the domain: the conversions both ways,
and the statements shared by the store's use cases and the person repository.

An encounter's events are stored as their `EncounterEvent` in ``encounter_event.body``
(jsonb), so `history.fold` can replay them; a candidate's decision as
`decide.recorded_decision`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import uuid
from typing import Any

from enrollment_svc.model import EncounterEvent, EncounterFacts, EncounterState

__all__ = ["HISTORY_COLUMNS", "SAVE_ENCOUNTER", "encounter_params", "event_body", "event_from_body", "history_columns",
           "json_value"]


def _json_default(value: object) -> str:
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(type(value).__name__)


def _flat(value: Any) -> dict[str, Any]:
    """A dataclass of flat values (times, strings, tuples of strings) as a dict for `json.dumps`:
    `dataclasses.asdict` would deep-copy every value first, for nothing."""
    return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}


def json_value(value: Any) -> Any:
    """A jsonb value: decoded already on a connection with SQLAlchemy's codec, text without it."""
    return json.loads(value) if isinstance(value, str) else value


def event_body(ev: EncounterEvent) -> str:
    return json.dumps(_flat(ev), default=_json_default)


def event_from_body(body: dict[str, Any] | str) -> EncounterEvent:
    if isinstance(body, str):  # jsonb read on a connection without SQLAlchemy's json codec
        body = json.loads(body)
        assert isinstance(body, dict)
    times = ("event_time", "received_at", "admit_time", "discharge_time")
    values: dict[str, Any] = {
        k: (dt.datetime.fromisoformat(v) if k in times and v is not None else v) for k, v in body.items()
    }
    values["diagnoses"] = tuple(values.get("diagnoses", ()))
    return EncounterEvent(**values)


def history_columns(since: str) -> str:
    """One person's window of history (`PersonHistory`) from the person row ``h``, its
    encounters from ``since`` on (a parameter, or a column of a joined set)."""
    return (
        "h.birth_date, h.medi_cal, h.county_resident, "
        "(SELECT program FROM candidate WHERE person_id = h.id AND status = ANY(:active) LIMIT 1) "
        "AS active_program, "
        "(SELECT true FROM patient_flag WHERE person_id = h.id LIMIT 1) IS NOT NULL AS has_flags, "
        "ARRAY(SELECT ROW(e.id, e.facility, e.visit_number, e.kind, e.status, e.start_at, e.end_at, e.dx_flags) "
        f"FROM encounter e WHERE e.person_id = h.id AND e.start_at >= {since} ORDER BY e.start_at) AS encounters"
    )


HISTORY_COLUMNS = history_columns(":since")

SAVE_ENCOUNTER = (
    "UPDATE encounter SET kind = :kind, status = :status, patient_class = :pc, hospital_service = :hs, "
    "start_at = :start, end_at = :end, dx_flags = :flags, diagnoses = :dx, "
    "last_event_time = :t, updated_at = now() WHERE id = :id"
)


def encounter_params(encounter_id: uuid.UUID, state: EncounterState, facts: EncounterFacts) -> dict[str, Any]:
    return {
        "id": encounter_id,
        "kind": facts.kind,
        "status": state.status,
        "pc": state.patient_class,
        "hs": state.hospital_service,
        "start": state.start,
        "end": state.end,
        "flags": sorted(facts.dx_flags),
        "dx": sorted(state.diagnoses),
        "t": state.last_event_time,
    }
