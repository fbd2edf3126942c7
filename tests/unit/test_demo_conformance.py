"""Demo mode gives the conformance checks half a CPU, unless the setting says otherwise."""

from __future__ import annotations

import pytest

from wpc.settings import load_system
from wpc.up import DEMO_CONFORMANCE_CPU_SHARE, demo_listener


def test_demo_mode_checks_the_samples_sooner(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WPC_CONFORMANCE_CPU_SHARE", raising=False)
    system = load_system().updated(database_url="postgresql+asyncpg://postgres@127.0.0.1:5432/x")
    assert system.listener.conformance_cpu_share == 0.05  # the production default
    assert demo_listener(system.listener).conformance_cpu_share == DEMO_CONFORMANCE_CPU_SHARE


def test_a_configured_share_is_kept_in_demo_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WPC_CONFORMANCE_CPU_SHARE", "0.1")
    system = load_system().updated(database_url="postgresql+asyncpg://postgres@127.0.0.1:5432/x")
    assert demo_listener(system.listener).conformance_cpu_share == 0.1
