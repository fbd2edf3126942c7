"""Running a FastAPI app inside a service's own lifecycle.

uvicorn's `Server.serve()` installs its own SIGINT/SIGTERM handlers; our services own
signal handling (one lifespan per service: stop taking work, drain, commit, close), so
this subclass leaves signals alone and is stopped by setting `should_exit`.

Also what the services' HTTP APIs share in reading requests (`utc_time`).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import Iterator

import uvicorn
from fastapi import FastAPI, HTTPException


def utc_time(value: dt.datetime) -> dt.datetime:
    """A time from a request body, in UTC; 422 when it has no offset (whose local time?)."""
    if value.tzinfo is None:
        raise HTTPException(422, "times must carry a UTC offset")
    return value.astimezone(dt.UTC)


class _QuietServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class HttpServer:
    def __init__(self, app: FastAPI, host: str, port: int) -> None:
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off",
                                access_log=False, timeout_graceful_shutdown=10)
        self._server = _QuietServer(config)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        task = self._task = asyncio.create_task(self._server.serve(), name="http")
        while not self._server.started:
            if task.done():
                self._task = None  # nothing to stop: a later stop() must not raise this again
                await task  # re-raise the startup failure (port in use, ...)
                raise RuntimeError("HTTP server stopped during startup")
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        if self._task is not None:
            self._server.should_exit = True
            await self._task
            self._task = None
