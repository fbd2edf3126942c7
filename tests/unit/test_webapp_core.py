"""The web app's pure parts: due dates in business days, the worklist order, sessions and
their idle time-out, and the users file's passwords and acting user."""

from __future__ import annotations

import datetime as dt

import pytest
from fastapi import FastAPI, HTTPException
from starlette.requests import Request

from services.auth import ACTING_USER_HEADER, Users, current_user, hash_password, verify_password
from webapp.sessions import Session, SessionCodec, csrf_matches
from webapp.views.worklist import add_business_days, build_worklist, business_deadline

LA = "America/Los_Angeles"
UTC = dt.UTC


@pytest.mark.parametrize(("start", "days", "expected"), [
    (dt.date(2026, 12, 1), 3, dt.date(2026, 12, 4)),   # Tuesday -> Friday
    (dt.date(2026, 12, 3), 3, dt.date(2026, 12, 8)),   # Thursday -> Tuesday, over the weekend
    (dt.date(2026, 12, 5), 3, dt.date(2026, 12, 9)),   # Saturday -> Wednesday
    (dt.date(2026, 12, 4), 5, dt.date(2026, 12, 11)),  # Friday -> next Friday
    (dt.date(2026, 12, 4), 0, dt.date(2026, 12, 4)),
])
def test_business_days_skip_weekends(start: dt.date, days: int, expected: dt.date) -> None:
    assert add_business_days(start, days) == expected


def test_business_days_skip_holidays() -> None:
    assert add_business_days(dt.date(2026, 12, 23), 3, {dt.date(2026, 12, 25)}) == dt.date(2026, 12, 29)


def test_the_deadline_is_the_end_of_the_last_day_in_the_site_zone() -> None:
    # Discharged Friday 4 Dec 2026 at 23:30 in Los Angeles (Saturday 07:30 UTC): the local day counts.
    deadline = business_deadline(dt.datetime(2026, 12, 5, 7, 30, tzinfo=UTC), 3, LA)
    assert deadline.astimezone(UTC) == dt.datetime(2026, 12, 10, 7, 59, 59, 999999, tzinfo=UTC)


def _candidate(n: int, status: str, **times: str | list[dict[str, str]] | None) -> dict[str, object]:
    return {"id": f"c{n}", "person_id": f"p{n}", "status": status, "facility": "HARBOR", "trigger": "admission",
            "created_at": f"2026-11-{10 + n:02d}T00:00:00+00:00", "services": [], **times}


def test_worklist_orders_by_what_is_due_and_marks_overdue() -> None:
    now = dt.datetime(2026, 12, 2, 18, 0, tzinfo=UTC)
    body = {"program": "TOC", "capacity": 10, "used": 3, "queued": 1, "candidates": [
        _candidate(1, "queued", admitted_at="2026-11-30T10:00:00+00:00"),
        # discharged Mon 23 Nov: home visit due by the end of Thu 26 Nov (local): overdue
        _candidate(2, "accepted", admitted_at="2026-11-20T10:00:00+00:00", discharged_at="2026-11-23T20:00:00+00:00"),
        # still admitted: a pre-discharge visit, no deadline
        _candidate(3, "accepted", admitted_at="2026-12-01T10:00:00+00:00"),
        # discharged, visited: only the PCP appointment is left (within a month)
        _candidate(4, "enrolled", admitted_at="2026-11-25T10:00:00+00:00", discharged_at="2026-11-28T10:00:00+00:00",
                   services=[{"kind": "home_visit", "at": "2026-11-30T10:00:00+00:00"}]),
        # pending: the proposal lapses before its home visit is due
        _candidate(5, "pending", admitted_at="2026-11-28T10:00:00+00:00", discharged_at="2026-12-01T20:00:00+00:00",
                   expires_at="2026-12-03T08:00:00+00:00"),
    ]}
    view = build_worklist(body, now, LA)
    assert [r.id for r in view.rows] == ["c2", "c5", "c4", "c3", "c1"]
    assert [r.overdue for r in view.rows] == [True, False, False, False, False]
    assert view.rows[0].due is not None and "home visit within 3 business days" in view.rows[0].due.what
    assert view.rows[1].due is not None and "lapses" in view.rows[1].due.what
    assert view.rows[2].due is not None and "PCP appointment" in view.rows[2].due.what
    assert view.rows[3].due is not None and view.rows[3].due.at is None and view.rows[3].in_hospital
    assert view.rows[4].due is None and view.overdue == 1 and (view.used, view.capacity, view.queued) == (3, 10, 1)


def test_isr_home_visit_within_five_business_days() -> None:
    body = {"program": "ISR", "candidates": [
        _candidate(1, "accepted", admitted_at="2026-11-20T10:00:00+00:00", discharged_at="2026-12-04T18:00:00+00:00")]}
    row = build_worklist(body, dt.datetime(2026, 12, 5, tzinfo=UTC), LA).rows[0]
    assert row.due is not None and row.due.at is not None
    assert row.due.at.astimezone(UTC).date() == dt.date(2026, 12, 12)  # end of Fri 11 Dec, Los Angeles


def test_a_session_lapses_when_idle_and_a_forged_one_is_refused() -> None:
    codec = SessionCodec("secret", idle_s=60, max_s=3600)
    signed_in = Session.fresh(0).signed_in("toc", 100.0)
    cookie = codec.encode(signed_in)
    assert codec.decode(cookie, 150.0).user == "toc"
    lapsed = codec.decode(cookie, 161.0)
    assert lapsed.user == "" and lapsed.ended == "idle"
    assert codec.decode(cookie[:-2] + "xx", 120.0).user == ""
    assert SessionCodec("other", idle_s=60, max_s=3600).decode(cookie, 120.0).user == ""
    assert codec.decode(codec.encode(signed_in.touched(3690.0)), 3701.0).ended == "expired"
    assert csrf_matches(signed_in, signed_in.csrf) and not csrf_matches(signed_in, "x") \
        and not csrf_matches(signed_in, None)


def test_passwords() -> None:
    stored = hash_password("correct horse")
    assert verify_password("correct horse", stored) and not verify_password("wrong", stored)
    users = Users.demo("api-token", "web-token")
    assert users.sign_in("toc", "demo") is not None and users.sign_in("toc", "x") is None
    assert users.sign_in("nobody", "demo") is None


def _request(users: Users, token: str, acting: str | None) -> Request:
    app = FastAPI()
    app.state.users = users
    headers = [(b"authorization", f"Bearer {token}".encode())]
    if acting is not None:
        headers.append((ACTING_USER_HEADER.lower().encode(), acting.encode()))
    return Request({"type": "http", "app": app, "headers": headers, "method": "GET", "path": "/"})


def test_only_the_web_app_may_act_for_a_user() -> None:
    users = Users.demo("api-token", "web-token")
    acting = current_user(_request(users, "web-token", "toc"))
    assert (acting.name, acting.programs(), acting.audit_actor) == ("toc", frozenset({"TOC"}), "toc via webapp")
    alone = current_user(_request(users, "web-token", None))
    assert alone.programs() == frozenset() and alone.audit_actor == "webapp"
    for token, name in (("api-token", "toc"), ("web-token", "nobody"), ("web-token", "webapp")):
        with pytest.raises(HTTPException) as refused:
            current_user(_request(users, token, name))
        assert refused.value.status_code == 403
