"""``GET /v1/consumers`` (role ``ops``): each consumer group of a service and how far behind it is.

The same figures as ``wpc_consumer_lag`` and ``/readyz`` (`services.consumer.ConsumerLoop`),
as JSON for the ops page of the web app, which cannot read Prometheus text or tell a
lagging consumer from a failing check in ``/readyz``. Group and topic names, numbers and
error classes only.
"""

from __future__ import annotations

from collections.abc import Sequence

from fastapi import APIRouter

from services.consumer import ConsumerLoop
from services.parking import Ops


def consumers_router(loops: Sequence[ConsumerLoop]) -> APIRouter:
    router = APIRouter(tags=["ops"])

    @router.get("/v1/consumers")
    async def consumers(user: Ops) -> list[dict[str, object]]:
        return [loop.status() for loop in loops]

    return router
