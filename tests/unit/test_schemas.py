"""Event contracts: the checked-in JSON Schema files match the models, and real events validate."""

from __future__ import annotations

import datetime as dt
import json

from adt_listener.intake import IntakePolicy, intake
from bench.synthetic import synthetic_feed
from schemas.adt_event import AdtEventV1, event_id_for
from schemas.generate import JSON_DIR, main


def test_checked_in_json_schemas_are_current() -> None:
    assert main(["--check"]) == 0


def test_event_round_trips_through_json_and_its_schema_names_every_field() -> None:
    decided = intake(synthetic_feed(1, seed=3)[0], received_at=dt.datetime.now(dt.UTC), policy=IntakePolicy())
    assert decided.event is not None
    again = AdtEventV1.model_validate_json(decided.event.model_dump_json())
    assert again == decided.event
    schema = json.loads((JSON_DIR / "adt_event.v1.json").read_text())
    assert set(schema["properties"]) == set(json.loads(decided.event.model_dump_json()))
    assert again.event_id == event_id_for(again.sending_facility, again.control_id, decided.content_digest)
