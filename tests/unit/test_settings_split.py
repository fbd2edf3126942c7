"""Settings per service (issue 11): each service's class holds the shared settings and its
own, every variable a county sets is still read by the service that needs it, and a
wrong value is reported once, naming its variable, whichever classes share it."""

from __future__ import annotations

import pytest

from adt_listener.settings import ListenerSettings
from enrollment_svc.settings import EnrollmentSettings
from notifier.settings import NotifierSettings
from services.configfile import ConfigError
from services.settings import DownstreamSettings, ServiceSettings, load_settings
from wpc.settings import SERVICE_SETTINGS, SystemSettings, load_system, setting_names

# The variables of the one `Settings` class before the split (issue 10's last release):
# none may stop being read.
BEFORE_THE_SPLIT = frozenset({
    "accepted_processing_ids", "commit_batch_max", "conformance_max_per_s", "consumer_max_lag",
    "consumer_max_restarts", "consumer_restart_window_s", "data_dir", "database_url", "demo_inbox_port",
    "enrollment_group_id", "enrollment_http_port", "enrollment_lanes", "expiry_interval_s", "http_host",
    "http_max_body_bytes", "kafka_bootstrap_servers", "kafka_timeout_s", "listener_http_port", "log_json",
    "log_level", "medi_cal_authorities", "mllp_first_frame_timeout_s", "mllp_host", "mllp_idle_timeout_s",
    "mllp_max_connections", "mllp_max_connections_per_address", "mllp_max_frame_bytes", "mllp_port",
    "mllp_read_timeout_s", "mllp_reserved_slots", "notifier_group_id", "notifier_http_port",
    "notifier_poll_interval_s", "notify_file", "relay_batch_max", "relay_poll_interval_s", "rules_file",
    "senders_file", "tls_cert_file", "tls_client_ca_file", "tls_key_file", "topic_adt_deadletter",
    "topic_adt_events", "topic_enrollment_candidates", "topic_enrollment_deadletter", "topic_enrollment_events",
    "topic_notifications_deadletter", "topic_notifier_deadletter", "users_file",
})


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.upper().startswith("WPC_"):
            monkeypatch.delenv(name)


def test_no_variable_is_lost() -> None:
    assert {f"WPC_{name.upper()}" for name in BEFORE_THE_SPLIT} <= setting_names()


@pytest.mark.parametrize(
    ("model", "own", "not_its"),
    [
        (ListenerSettings, {"mllp_port", "senders_file", "tls_cert_file", "commit_batch_max"},
         {"rules_file", "notify_file", "users_file", "consumer_max_lag", "enrollment_http_port"}),
        (EnrollmentSettings, {"rules_file", "enrollment_lanes", "users_file", "consumer_max_lag"},
         {"mllp_port", "senders_file", "notify_file", "notifier_http_port"}),
        (NotifierSettings, {"notify_file", "notifier_poll_interval_s", "users_file", "demo_inbox_port"},
         {"mllp_port", "rules_file", "enrollment_lanes", "enrollment_http_port"}),
    ],
)
def test_each_service_reads_its_own_and_the_shared(
    model: type[ServiceSettings], own: set[str], not_its: set[str]
) -> None:
    fields = set(model.model_fields)
    assert set(ServiceSettings.model_fields) <= fields
    assert own <= fields
    assert not fields & not_its


def test_service_classes_add_only_their_own_fields() -> None:
    """No setting is defined twice: a field lives in exactly one class of the tree. One
    exception: the web app reads WPC_USERS_FILE too (who may sign in), and is no downstream
    service (it consumes no topic), so it declares the field itself."""
    shared = set(ServiceSettings.model_fields)
    downstream = set(DownstreamSettings.model_fields) - shared
    own = [set(m.model_fields) - shared - (downstream if issubclass(m, DownstreamSettings) else {"users_file"})
           for m in SERVICE_SETTINGS]
    assert all(not (a & b) for i, a in enumerate(own) for b in own[i + 1:])


def test_the_same_variable_reaches_every_service(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WPC_TOPIC_ADT_EVENTS", "county.adt")
    monkeypatch.setenv("WPC_MLLP_PORT", "3575")
    system = load_system()
    assert {s.topic_adt_events for s in system.services} == {"county.adt"}
    assert system.listener.mllp_port == 3575


def test_a_shared_mistake_is_reported_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WPC_LOG_LEVEL", "verbose")
    monkeypatch.setenv("WPC_ENROLLMENT_LANES", "many")
    with pytest.raises(ConfigError) as info:
        load_system()
    assert info.value.problems == (
        "WPC_LOG_LEVEL='verbose': not a log level; use one of DEBUG, INFO, WARNING, ERROR, CRITICAL",
        "WPC_ENROLLMENT_LANES='many': not an integer (e.g. WPC_ENROLLMENT_LANES=8)",
    )


def test_an_option_is_given_to_the_service_it_belongs_to() -> None:
    system = load_system({"mllp_port": 0, "notifier_http_port": 0})
    assert system.listener.mllp_port == 0 and system.notifier.notifier_http_port == 0
    # A service never sees another's option (nor does a field of that name exist there).
    with pytest.raises(ConfigError, match=r"^--mllp-port 99999: not a TCP port"):
        load_settings(ListenerSettings, {"mllp_port": 99999, "rules_file": "x"}, flags={"mllp_port": "--mllp-port"})


def test_system_of_refuses_a_name_no_service_reads() -> None:
    with pytest.raises(TypeError, match="mllp_prot"):
        SystemSettings.of(mllp_prot=1)
    system = SystemSettings.of(mllp_port=1, rules_file="r.yaml", notify_file="n.yaml")
    assert system.listener.mllp_port == 1
    assert str(system.enrollment.rules_file) == "r.yaml" and str(system.notifier.notify_file) == "n.yaml"


def test_updated_points_every_service_at_the_servers() -> None:
    system = load_system().updated(database_url="postgresql://db/wpc", kafka_bootstrap_servers="k:9092")
    assert {(s.database_url, s.kafka_bootstrap_servers) for s in system.services} == {
        ("postgresql://db/wpc", "k:9092")
    }
