"""What the feeds pages show, computed from the APIs' JSON (pure: no I/O, unit-tested).

- `overview`: one row per sending facility from the listener's ``/v1/feeds``, with the
  enrollment service's ``/v1/feed-findings`` of that facility beside the listener's own
  findings, in words; the backlogs (relay, consumers) and the failed deliveries.
- `search_form`: the message browser's form values checked and turned into the listener's
  query (times typed in the site's zone, sent with their offset).
- `message`: one message as the detail page lays it out.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

from webapp.views.timefmt import parse_time

ACK_WORDS = {"AA": "accepted", "AE": "error", "AR": "rejected"}
# A facility that sent nothing for this long is marked quiet (feeds send around the clock).
QUIET_AFTER = dt.timedelta(hours=2)
_EVENT = re.compile(r"^[A-Z0-9]{3}$")
# The longest values the listener's search takes (HL7 v2.5 lengths of MSH-4 and MSH-10).
_LONGEST = {"facility": 227, "control_id": 199}
# How the form labels the fields (a problem names the field as the user sees it).
_LABELS = {"facility": "facility (MSH-4)", "control_id": "control id (MSH-10)", "since": "From", "until": "Until"}


class FormProblem(ValueError):
    """A search form value the listener would refuse; the text names the field."""


@dataclass(frozen=True)
class FacilityRow:
    facility: str
    last_message_at: dt.datetime | None
    quiet: bool  # nothing received for QUIET_AFTER
    accepted: int
    errors: int
    rejected: int
    duplicates: int
    reprocessed: int
    events_waiting: int
    dead_letters_waiting: int
    findings: list[str]  # in words, most frequent first


@dataclass(frozen=True)
class ConsumerRow:
    service: str
    group: str
    lag: int | None
    ready: bool
    reason: str | None


@dataclass(frozen=True)
class Overview:
    facilities: list[FacilityRow]
    relay_events: int
    relay_dead_letters: int
    consumers: list[ConsumerRow]
    failures: list[dict[str, Any]]
    unavailable: list[str] = field(default_factory=list)  # sections whose API did not answer


def _listener_findings(entry: Mapping[str, Any] | None) -> list[str]:
    if not entry:
        return []
    out = [f"{f['kind']} at {f['location'] or 'message'}: {f['messages']} message{'s' * (f['messages'] != 1)}"
           for f in entry.get("top_findings") or []]
    reuse = entry.get("control_id_reuse")
    if reuse:
        out.append(f"control ids reused: {reuse['messages']} message{'s' * (reuse['messages'] != 1)} "
                   f"under {reuse['control_ids']} id{'s' * (reuse['control_ids'] != 1)}")
    return out


def overview(
    listener: Mapping[str, Any] | None,
    enrollment_findings: Sequence[Mapping[str, Any]] | None,
    consumers: Mapping[str, Sequence[Mapping[str, Any]] | None],
    failures: Sequence[Mapping[str, Any]] | None,
    now: dt.datetime,
) -> Overview:
    """The overview; an argument that is None is a section whose API did not answer."""
    unavailable = [name for name, part in (("listener", listener), ("enrollment findings", enrollment_findings),
                                           ("notification failures", failures)) if part is None]
    unavailable += [f"{service} consumers" for service, rows in consumers.items() if rows is None]
    theirs: dict[str, list[str]] = {}
    for f in enrollment_findings or []:
        theirs.setdefault(str(f["facility"]), []).append(f"{str(f['kind']).replace('_', ' ')}: {f['count']}")
    rows = []
    listed = list((listener or {}).get("facilities") or [])
    known = {str(f["sending_facility"]) for f in listed}
    listed += [{"sending_facility": name} for name in sorted(set(theirs) - known)]
    for f in listed:
        name = str(f["sending_facility"])
        today = f.get("today") or {}
        backlog = f.get("backlog") or {}
        last = parse_time(f.get("last_message_at"))
        rows.append(FacilityRow(
            facility=name, last_message_at=last, quiet=last is None or now - last > QUIET_AFTER,
            accepted=int(today.get("AA", 0)), errors=int(today.get("AE", 0)), rejected=int(today.get("AR", 0)),
            duplicates=int(today.get("duplicates", 0)), reprocessed=int(today.get("reprocessed", 0)),
            events_waiting=int(backlog.get("events", 0)), dead_letters_waiting=int(backlog.get("dead_letters", 0)),
            findings=_listener_findings(f.get("findings")) + theirs.get(name, []),
        ))
    relay = (listener or {}).get("relay_backlog") or {}
    consumer_rows = [
        ConsumerRow(service, str(c["group"]), c.get("lag"), bool(c.get("ready")), c.get("reason"))
        for service, listed_consumers in consumers.items() for c in listed_consumers or []
    ]
    return Overview(rows, int(relay.get("events", 0)), int(relay.get("dead_letters", 0)), consumer_rows,
                    [dict(f) for f in failures or []], unavailable)


def _local(value: str, name: str, zone: ZoneInfo) -> str:
    """A ``datetime-local`` form value (site time) as ISO 8601 with its offset."""
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError as exc:
        raise FormProblem(f"{name}: not a date and time") from exc
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=zone)).isoformat()


def search_form(values: Mapping[str, str | None], zone: str) -> dict[str, str]:
    """The listener's ``/v1/messages`` query from the form (empty fields left out);
    `FormProblem` names a value it would refuse."""
    query: dict[str, str] = {}
    for name in ("facility", "control_id", "event", "ack", "since", "until", "before"):
        value = (values.get(name) or "").strip()
        if value:
            query[name] = value
    for name, limit in _LONGEST.items():
        if len(query.get(name, "")) > limit:
            raise FormProblem(f"{_LABELS[name]}: at most {limit} characters")
    if "before" in query:
        try:
            uuid.UUID(query["before"])
        except ValueError as exc:
            raise FormProblem("before: not a message id (use the Older messages link)") from exc
    if "ack" in query and query["ack"] not in ACK_WORDS:
        raise FormProblem("ACK code: choose AA, AE or AR")
    if "event" in query:
        query["event"] = query["event"].upper()
        if not _EVENT.match(query["event"]):
            raise FormProblem("event: a trigger such as A01")
    for name in ("since", "until"):
        if name in query:
            query[name] = _local(query[name], _LABELS[name], ZoneInfo(zone))
    return query


def message(detail: Mapping[str, Any]) -> dict[str, Any]:
    """The detail page's values: the API's, plus the ACK code in words and the findings
    split by severity (errors decide, warnings do not)."""
    findings = list(detail.get("findings") or [])
    return dict(detail) | {
        "ack_words": ACK_WORDS.get(str(detail.get("ack_code")), str(detail.get("ack_code"))),
        "errors": [f for f in findings if f.get("severity") == "E"],
        "warnings": [f for f in findings if f.get("severity") != "E"],
    }
