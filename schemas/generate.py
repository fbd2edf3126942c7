"""Write the JSON Schema of every event contract to schemas/json/ (checked in).

    python -m schemas.generate          # rewrite the files
    python -m schemas.generate --check  # exit 1 if a file is stale (used by the tests)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pydantic import BaseModel

from schemas.adt_deadletter import AdtDeadLetterV1
from schemas.adt_event import AdtEventV1
from schemas.enrollment import EnrollmentCandidateV1, EnrollmentEventV1
from schemas.measure import PcpNotifiedV1
from schemas.notification import NotificationDeadLetterV1, NotificationV1
from schemas.parked_event import ParkedEventV1

JSON_DIR = Path(__file__).with_name("json")
CONTRACTS: dict[str, type[BaseModel]] = {
    "adt_event.v1.json": AdtEventV1,
    "adt_deadletter.v1.json": AdtDeadLetterV1,
    "enrollment_candidate.v1.json": EnrollmentCandidateV1,
    "enrollment_event.v1.json": EnrollmentEventV1,
    "notification.v1.json": NotificationV1,
    "notifications_measure.v1.json": PcpNotifiedV1,
    "notification_deadletter.v1.json": NotificationDeadLetterV1,
    "parked_event.v1.json": ParkedEventV1,
}


def render(model: type[BaseModel]) -> str:
    return json.dumps(model.model_json_schema(mode="serialization"), indent=2, sort_keys=True) + "\n"


def main(argv: list[str]) -> int:
    stale = []
    for name, model in CONTRACTS.items():
        path = JSON_DIR / name
        text = render(model)
        if "--check" in argv:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
    if stale:
        print(f"stale JSON Schema files (run python -m schemas.generate): {', '.join(stale)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
