"""`services.lifecycle.collect_less_often`: young collections every 50,000 objects, not 700."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from services import lifecycle


@pytest.fixture
def thresholds() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.set_threshold(*before)


def test_young_collections_come_less_often_and_the_older_generations_keep_theirs(thresholds: None) -> None:
    gc.set_threshold(700, 10, 10)
    lifecycle.collect_less_often()
    assert gc.get_threshold() == (lifecycle.GC_YOUNG_THRESHOLD, 10, 10)


def test_a_batch_of_short_lived_objects_sets_off_no_collection(thresholds: None) -> None:
    """What a consumer batch does: thousands of containers alive together until it ends."""
    runs: list[int] = []

    def counted(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            runs.append(info["generation"])

    def batch() -> int:
        held = [{"n": [n]} for n in range(5_000)]  # 10,000 tracked containers at once
        return len(held)

    gc.callbacks.append(counted)
    try:
        gc.set_threshold(700, 10, 10)
        gc.collect()
        batch()
        assert runs, "at CPython's default the batch sets off young collections"
        runs.clear()
        lifecycle.collect_less_often()
        gc.collect()
        runs.clear()
        batch()
        assert runs == []
    finally:
        gc.callbacks.remove(counted)
