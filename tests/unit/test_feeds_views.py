"""The feeds pages' view models (webapp.views.feeds), from API JSON as the APIs send it."""

from __future__ import annotations

import datetime as dt

import pytest

from webapp.views.feeds import FormProblem, message, overview, search_form

NOW = dt.datetime(2026, 12, 2, 18, 0, tzinfo=dt.UTC)

LISTENER = {
    "facilities": [
        {"sending_facility": "NORTH", "last_message_at": "2026-12-02T17:30:00+00:00",
         "today": {"AA": 5, "AE": 1, "AR": 0, "duplicates": 2, "reprocessed": 1, "reprocessed_accepted": 1},
         "backlog": {"events": 3, "dead_letters": 0},
         "findings": {"top_findings": [{"kind": "table", "location": "PID-8", "messages": 2}],
                      "control_id_reuse": {"control_ids": 1, "messages": 1}}},
        {"sending_facility": "SOUTH", "last_message_at": "2026-12-01T09:00:00+00:00",
         "today": {"AA": 0, "AE": 0, "AR": 0, "duplicates": 0}, "backlog": {"events": 0, "dead_letters": 1},
         "findings": None},
    ],
    "relay_backlog": {"events": 3, "dead_letters": 1},
}


def test_overview_rows_findings_in_words_and_quiet_feeds() -> None:
    view = overview(LISTENER, [{"facility": "NORTH", "kind": "visit_number_reused", "count": 4},
                               {"facility": "EAST", "kind": "clock_ahead", "count": 1}],
                    {"enrollment": [{"group": "wpc-enrollment", "lag": 7, "ready": True, "reason": None}],
                     "notifier": None},
                    [{"delivery_id": "d1", "recipient_id": "toc-team"}], NOW)
    north, south, east = view.facilities
    assert (north.facility, north.accepted, north.errors, north.duplicates, north.events_waiting) == \
        ("NORTH", 5, 1, 2, 3)
    assert north.findings == ["table at PID-8: 2 messages", "control ids reused: 1 message under 1 id",
                              "visit number reused: 4"]
    assert not north.quiet and south.quiet  # nothing from SOUTH for 33 hours
    assert east.facility == "EAST" and east.last_message_at is None and east.findings == ["clock ahead: 1"]
    assert (view.relay_events, view.relay_dead_letters) == (3, 1)
    assert [(c.service, c.lag) for c in view.consumers] == [("enrollment", 7)]
    assert view.unavailable == ["notifier consumers"] and view.failures == [{"delivery_id": "d1",
                                                                             "recipient_id": "toc-team"}]


def test_a_service_that_did_not_answer_is_named_not_fatal() -> None:
    view = overview(None, None, {"enrollment": None}, None, NOW)
    assert view.facilities == [] and view.unavailable == [
        "listener", "enrollment findings", "notification failures", "enrollment consumers"]


def test_search_form_to_the_listener_query() -> None:
    assert search_form({"facility": " NORTH ", "event": "a01", "ack": "AR", "since": "2026-12-02T08:00",
                        "until": "", "control_id": None}, "America/Los_Angeles") == {
        "facility": "NORTH", "event": "A01", "ack": "AR", "since": "2026-12-02T08:00:00-08:00"}
    with pytest.raises(FormProblem, match="ACK"):
        search_form({"ack": "OK"}, "UTC")
    with pytest.raises(FormProblem, match="event"):
        search_form({"event": "A1;DROP"}, "UTC")
    with pytest.raises(FormProblem, match="From: not a date"):
        search_form({"since": "yesterday"}, "UTC")
    with pytest.raises(FormProblem, match="Until: not a date"):
        search_form({"until": "2026-13-45T99:00"}, "UTC")
    # What the listener would refuse with a 422 is named here, as a 400 with the field.
    with pytest.raises(FormProblem, match="before: not a message id"):
        search_form({"before": "not-an-id"}, "UTC")
    with pytest.raises(FormProblem, match=r"facility \(MSH-4\): at most 227"):
        search_form({"facility": "F" * 228}, "UTC")
    assert search_form({"control_id": "C" * 199}, "UTC") == {"control_id": "C" * 199}


def test_message_findings_split_by_severity() -> None:
    m = message({"ack_code": "AE", "findings": [{"severity": "E", "code": 100, "location": "PV1", "text": "x"},
                                                {"severity": "W", "code": 103, "location": "PID-8", "text": "y"}]})
    assert m["ack_words"] == "error" and [f["code"] for f in m["errors"]] == [100]
    assert [f["code"] for f in m["warnings"]] == [103]
