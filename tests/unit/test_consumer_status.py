"""GET /v1/consumers (services.backlog): each consumer group's lag and readiness, ops only."""

from __future__ import annotations

import hashlib

import httpx
from fastapi import FastAPI

from services.auth import User, Users
from services.backlog import consumers_router
from services.consumer import ConsumerLoop


async def _nothing(records: object) -> None:
    return None


def app_of(*loops: ConsumerLoop) -> FastAPI:
    app = FastAPI()
    app.include_router(consumers_router(loops))
    app.state.users = Users({
        hashlib.sha256(b"ops").hexdigest(): User("olga", frozenset({"ops"})),
        hashlib.sha256(b"toc").hexdigest(): User("toc", frozenset({"care_team:TOC"})),
    })
    return app


async def test_lag_and_readiness_per_group() -> None:
    events = ConsumerLoop("127.0.0.1:1", ["adt.events"], "wpc-enrollment", _nothing, max_lag=100)
    measures = ConsumerLoop("127.0.0.1:1", ["notifications.measures"], "wpc-enrollment.measures", _nothing)
    events.lag = 250  # as `_measure_lag` leaves it
    transport = httpx.ASGITransport(app=app_of(events, measures))
    async with httpx.AsyncClient(transport=transport, base_url="http://svc") as client:
        r = await client.get("/v1/consumers", headers={"Authorization": "Bearer ops"})
        assert r.status_code == 200
        assert r.json() == [
            {"group": "wpc-enrollment", "topics": ["adt.events"], "lag": 250, "running": False, "ready": False,
             "reason": "consumer wpc-enrollment: 250 records behind (bound 100)"},
            {"group": "wpc-enrollment.measures", "topics": ["notifications.measures"], "lag": None,
             "running": False, "ready": True, "reason": None},
        ]
        assert (await client.get("/v1/consumers", headers={"Authorization": "Bearer toc"})).status_code == 403
        assert (await client.get("/v1/consumers")).status_code == 401
