"""A running listener (MLLP + HTTP + relay) on free loopback ports, real PostgreSQL and broker."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import pytest

from adt_listener.service import Listener
from adt_listener.settings import ListenerSettings
from services.embedded import free_port
from tests.conftest import Broker

StartListener = Callable[..., AbstractAsyncContextManager[Listener]]


def listener_values(database_url: str, bootstrap: str, topics: dict[str, str]) -> dict[str, Any]:
    """The settings of a listener of this test (free loopback ports, its topics)."""
    return dict(
        database_url=database_url,
        kafka_bootstrap_servers=bootstrap,
        topic_adt_events=topics["adt_events"],
        topic_adt_deadletter=topics["adt_deadletter"],
        mllp_host="127.0.0.1",
        mllp_port=free_port(),
        http_host="127.0.0.1",
        listener_http_port=free_port(),
        relay_poll_interval_s=0.05,
    )


def listener_settings(database_url: str, bootstrap: str, topics: dict[str, str], **extra: Any) -> ListenerSettings:
    values = {**listener_values(database_url, bootstrap, topics), **extra}
    unknown = set(values) - set(ListenerSettings.model_fields)
    assert not unknown, f"not settings of the listener: {unknown}"
    return ListenerSettings(**values)


@pytest.fixture
def start_listener(database_url: str, broker: Broker, topics: dict[str, str]) -> StartListener:
    """`async with start_listener(**settings) as listener:` — a listener of this test."""

    @asynccontextmanager
    async def start(
        *, bootstrap: str | None = None, run_conformance: bool = False, **extra: Any
    ) -> AsyncIterator[Listener]:
        settings = listener_settings(database_url, bootstrap or broker.bootstrap, topics, **extra)
        async with Listener(settings, run_conformance=run_conformance) as listener:
            yield listener

    return start
