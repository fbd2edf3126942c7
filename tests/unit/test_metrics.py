"""Metric label helpers: remembered children and facility labels behave like the uncached ones."""

from __future__ import annotations

from services import metrics


def test_child_is_the_labelled_metric_and_is_remembered() -> None:
    a = metrics.child(metrics.MESSAGES_RECEIVED, "mllp", "FAC_T1", "A01")
    assert a is metrics.child(metrics.MESSAGES_RECEIVED, "mllp", "FAC_T1", "A01")
    assert a is metrics.MESSAGES_RECEIVED.labels(channel="mllp", facility="FAC_T1", trigger="A01")
    before = a._value.get()
    metrics.child(metrics.MESSAGES_RECEIVED, "mllp", "FAC_T1", "A01").inc()
    assert a._value.get() == before + 1


def test_facility_label_is_sanitized_and_stable() -> None:
    assert metrics.facility_label("ST MARY/Ü") == "ST_MARY__"
    assert metrics.facility_label("ST MARY/Ü") == "ST_MARY__"  # the cached answer is the same
    assert metrics.facility_label("") == "unknown"
