"""Ops endpoints every service mounts: /healthz, /readyz, /metrics.

- /healthz: the process is alive and its event loop answers (no dependency checks,
  so a database outage never gets a pod killed).
- /readyz: every dependency answers (database, broker) and every consumer is healthy
  (not restarting again and again, not lagging past its bound); 503 otherwise, with the
  failing checks named and, where a check gives one, its reason (``reasons``; ids and
  error classes only, never data).
- /readyz/ingest: only what taking traffic needs. For the listener that is the
  database: it keeps ACKing from PostgreSQL while the broker is down, so its
  Kubernetes readiness probe uses this path and a Kafka outage does not cut
  hospitals off.
- /metrics: Prometheus text format.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest


@dataclass(frozen=True)
class Verdict:
    """A check's answer with its reason (a check may also answer a plain bool)."""

    ok: bool
    reason: str = ""


Check = Callable[[], Awaitable[bool | Verdict]]
CHECK_TIMEOUT_S = 3.0


async def _run(checks: Mapping[str, Check]) -> dict[str, Verdict]:
    async def one(check: Check) -> Verdict:
        try:
            answer = await asyncio.wait_for(check(), CHECK_TIMEOUT_S)
        except Exception:  # a failing check is an answer, not an error of ours
            return Verdict(False)
        return answer if isinstance(answer, Verdict) else Verdict(bool(answer))

    results = await asyncio.gather(*(one(c) for c in checks.values()))
    return dict(zip(checks, results, strict=True))


def ops_router(checks: Mapping[str, Check], ingest_checks: tuple[str, ...]) -> APIRouter:
    router = APIRouter(tags=["ops"])

    @router.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "alive"}

    async def _ready(names: tuple[str, ...]) -> JSONResponse:
        results = await _run({n: checks[n] for n in names})
        ok = all(v.ok for v in results.values())
        body: dict[str, object] = {"status": "ready" if ok else "not ready",
                                   "checks": {n: "ok" if v.ok else "failing" for n, v in results.items()}}
        reasons = {n: v.reason for n, v in results.items() if not v.ok and v.reason}
        if reasons:
            body["reasons"] = reasons
        return JSONResponse(body, status_code=200 if ok else 503)

    @router.get("/readyz")
    async def readyz() -> JSONResponse:
        return await _ready(tuple(checks))

    @router.get("/readyz/ingest")
    async def readyz_ingest() -> JSONResponse:
        return await _ready(ingest_checks)

    @router.get("/metrics")
    async def metrics_endpoint() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return router
