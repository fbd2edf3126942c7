"""One owner per topic (issue 11): the services' settings say which topics each publishes
and reads; no topic has two publishers, every topic read has one, each relay has a lock key
of its own, and a writer built with topics that are not its service's refuses to start."""

from __future__ import annotations

import pytest

from adt_listener import service as listener_service
from adt_listener.settings import ListenerSettings
from adt_listener.store import MessageStore, Topics
from enrollment_svc import service as enrollment_service
from enrollment_svc.settings import EnrollmentSettings
from enrollment_svc.store import EnrollmentStore
from enrollment_svc.store import Topics as EnrollmentTopics
from notifier import service as notifier_service
from notifier.settings import NotifierSettings
from services.outbox import ForeignTopic, Outbox
from services.parking import Parking
from tests.integration.test_enrollment_store import rules

SETTINGS = [ListenerSettings.model_construct(), EnrollmentSettings.model_construct(),
            NotifierSettings.model_construct()]


def test_every_topic_has_one_publisher() -> None:
    published = [t for s in SETTINGS for t in s.published_topics()]
    assert len(published) == len(set(published)), published
    assert {s.service for s in SETTINGS} == {"listener", "enrollment", "notifier"}


def test_what_is_read_is_published_by_another_service() -> None:
    owner = {t: s.service for s in SETTINGS for t in s.published_topics()}
    for s in SETTINGS:
        for topic in s.consumed_topics():
            assert owner.get(topic) not in (None, s.service), (s.service, topic)


def test_the_expected_owners() -> None:
    listener, enrollment, notifier = (set(s.published_topics()) for s in SETTINGS)
    assert listener == {"adt.events", "adt.deadletter"}
    assert enrollment == {"enrollment.candidates", "enrollment.events", "enrollment.deadletter"}
    assert notifier == {"notifications.deadletter", "notifier.deadletter", "notifications.measures"}


def test_each_relay_has_its_own_lock_key() -> None:
    keys = [listener_service.OUTBOX_LOCK_KEY, listener_service.EVENTS_LOCK_KEY,
            enrollment_service.OUTBOX_LOCK_KEY, notifier_service.OUTBOX_LOCK_KEY]
    assert len(set(keys)) == len(keys), keys


def test_writers_refuse_topics_their_service_does_not_own() -> None:
    listener = Outbox.of("listener", ["adt.events", "adt.deadletter"])
    with pytest.raises(ForeignTopic):
        EnrollmentStore(rules(), EnrollmentTopics(), listener)
    with pytest.raises(ForeignTopic):
        Parking(object(), "wpc-notifier", "enrollment.deadletter",  # type: ignore[arg-type]
                outbox=Outbox.of("notifier", ["notifier.deadletter"]))
    with pytest.raises(ForeignTopic):
        MessageStore(object(), Topics("adt.events", "adt.deadletter"),  # type: ignore[arg-type]
                     outbox=Outbox.of("listener", ["adt.events"]))
    assert EnrollmentStore(rules()).outbox.service == "enrollment"
