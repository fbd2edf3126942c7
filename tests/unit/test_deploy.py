"""The deploy files (Dockerfile, deploy/compose.yaml, deploy/k8s/, and the rules and
notification configuration they deploy) checked against the code.

There is no container engine on the build machines, so these files are never run in CI;
instead every fact they share with the code is checked here against the code itself:
setting names against the fields of each service's settings class (a service's own env: its
class; the shared ConfigMap: any service's), sub-commands against `wpc.cli.COMMANDS`,
ports against the settings' defaults (or the env value set beside them), probe paths against
the routes of the service that serves them, the image tag against `pyproject.toml`.

Four long-running services are deployed, the ADT listener (`wpc listener`), the enrollment
service (`wpc enrollment`), the notifier (`wpc notifier`) and the care team's web app (`wpc
web`); every per-service check runs for each of them (`SERVICES`; one entry per settings class
of `wpc.settings.SERVICE_SETTINGS`, checked). The web app reaches no database and no Kafka
(it works through the other services' APIs), so the checks of those run for the services that
do (`STORES`, `KAFKA_CLIENTS`: the latter derived from each settings class's topics), and
the web app's own checks say it is given neither. The notifier also reads environment
variables that are not settings: the endpoint secrets its notification configuration names
(`secret_env`, smtp `username_env` / `password_env`), checked against the deployed file itself.
"""

from __future__ import annotations

import copy
import fnmatch
import functools
import json
import re
import tomllib
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest
import yaml
from sqlalchemy.engine import make_url

from adt_listener.senders import load_senders
from adt_listener.settings import ListenerSettings
from enrollment_svc.rules import load_rules
from enrollment_svc.settings import EnrollmentSettings
from notifier.config import NotifyConfig, endpoints_of, load_config
from notifier.settings import NotifierSettings
from services.auth import load_users
from services.settings import ServiceSettings
from webapp.settings import WebSettings
from wpc.cli import COMMANDS, build_parser
from wpc.settings import SERVICE_SETTINGS

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE_FILE = DEPLOY / "compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"
IMAGE_REPO = "ghcr.io/wpc-pilot/wpc-backend"

PREFIX = str(ServiceSettings.model_config["env_prefix"])
# Every setting of any service, by field name.
FIELDS = {name: info for model in SERVICE_SETTINGS for name, info in model.model_fields.items()}
# What each deployed container reads (by compose service / k8s Deployment or Job name).
SETTINGS_OF: dict[str, type[ServiceSettings]] = {
    "adt-listener": ListenerSettings, "enrollment": EnrollmentSettings, "notifier": NotifierSettings,
    "webapp": WebSettings, "migrate": ServiceSettings, "wpc-migrate": ServiceSettings,
}
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
VERSION = PYPROJECT["project"]["version"]
IMAGE = f"{IMAGE_REPO}:{VERSION}"

# The public placeholder token of deploy/users.example.yaml (documented there and in the README).
EXAMPLE_USERS_FILE = DEPLOY / "users.example.yaml"
EXAMPLE_USER_TOKEN = "wpc-dev-only-care-team-token"
# ... the web app's (compose's WPC_WEB_API_TOKEN default), and the example browser user's password.
EXAMPLE_WEBAPP_TOKEN = "wpc-dev-only-webapp-token"
EXAMPLE_SIGN_IN = ("dev.toc", "wpc-dev-only-password")
# The county's program rules: mounted by compose, turned into a ConfigMap by kustomize.
RULES_FILE = DEPLOY / "rules" / "wpc-rules.yaml"
# The county's notification configuration: the same, for the notifier.
NOTIFY_DIR = DEPLOY / "notify"
NOTIFY_FILE = NOTIFY_DIR / "wpc-notify.yaml"


# --- loading ------------------------------------------------------------------------------


def _default(field: str) -> Any:
    # The code's default, not a settings object: the environment running the tests must not matter.
    return FIELDS[field].default


def _env_name(field: str) -> str:
    return f"{PREFIX}{field}".upper()


@functools.cache
def _parse(text: str) -> tuple[Any, ...]:
    return tuple(yaml.safe_load_all(text))


def _yaml_docs(path: Path) -> list[Any]:
    """The documents of a YAML file. Parsed once per content (the k8s files are read by nearly
    every test), and copied, so no test can change what the next one reads."""
    return copy.deepcopy(list(_parse(path.read_text())))


def _compose() -> dict[str, Any]:
    (compose,) = _yaml_docs(COMPOSE_FILE)
    return cast(dict[str, Any], compose)


def _services() -> dict[str, dict[str, Any]]:
    return _compose()["services"]


def _compose_env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # the `- KEY=value` form
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def _interpolate(value: str) -> str:
    """Compose's `${VAR:-default}` / `${VAR}` with nothing set in the shell."""
    return re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*(?::?-([^}]*))?\}", lambda m: m.group(1) or "", value)


def _k8s_docs(name: str) -> list[dict[str, Any]]:
    return [d for d in _yaml_docs(K8S / name) if d]


def _all_k8s_docs() -> Iterator[tuple[str, dict[str, Any]]]:
    for path in sorted(K8S.glob("*.yaml")):
        for doc in _k8s_docs(path.name):
            yield path.name, doc


def _one(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [
        d
        for _, d in _all_k8s_docs()
        if d.get("kind") == kind and (name is None or d["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''} in deploy/k8s, found {len(found)}"
    return found[0]


def _pod_specs() -> Iterator[tuple[str, dict[str, Any]]]:
    for _, doc in _all_k8s_docs():
        if doc.get("kind") in {"Deployment", "Job", "StatefulSet", "DaemonSet"}:
            yield doc["metadata"]["name"], doc["spec"]["template"]["spec"]


def _containers() -> Iterator[tuple[str, dict[str, Any]]]:
    for owner, spec in _pod_specs():
        for c in [*spec.get("initContainers", []), *spec["containers"]]:
            yield f"{owner}/{c['name']}", c


def _pod(deployment: str) -> dict[str, Any]:
    """The pod template of a Deployment (metadata and spec)."""
    return _one("Deployment", deployment)["spec"]["template"]


def _container(deployment: str) -> dict[str, Any]:
    (container,) = _pod(deployment)["spec"]["containers"]
    return container


def _listener_pod() -> dict[str, Any]:
    return _pod("adt-listener")


def _listener_container() -> dict[str, Any]:
    return _container("adt-listener")


def _configmap() -> dict[str, str]:
    return _one("ConfigMap", "wpc-config")["data"]


def _example_secrets() -> dict[str, dict[str, Any]]:
    secrets = {}
    for doc in _k8s_docs("secret.example.yaml"):
        assert doc["kind"] == "Secret"
        secrets[doc["metadata"]["name"]] = {**doc.get("data", {}), **doc.get("stringData", {})}
    return secrets


def _k8s_env(deployment: str) -> dict[str, str]:
    return _container_env(_container(deployment))


def _container_env(container: dict[str, Any]) -> dict[str, str]:
    """What a container sees: envFrom (ConfigMap, example Secrets), then `env`."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            assert source["configMapRef"]["name"] == _one("ConfigMap")["metadata"]["name"]
            env.update(_configmap())
        else:
            env.update(_example_secrets()[source["secretRef"]["name"]])
    env.update({e["name"]: str(e["value"]) for e in container.get("env", []) if "value" in e})
    return env


def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        instructions.append((keyword.upper(), args.strip()))
        pending = ""
    return instructions


def _final_stage() -> list[tuple[str, str]]:
    instructions = _dockerfile()
    last_from = max(i for i, (k, _) in enumerate(instructions) if k == "FROM")
    return instructions[last_from:]


def _k8s_listener_env() -> dict[str, str]:
    return _k8s_env("adt-listener")


def _listener_routes() -> set[str]:
    try:
        from adt_listener.http import route_paths
    except ImportError as exc:
        pytest.fail(
            "adt_listener.http.route_paths() is needed to check the deploy files' probe and "
            f"health-check paths against the listener's HTTP routes, but it cannot be imported: {exc!r}"
        )
    return set(route_paths())


def _enrollment_app() -> Any:
    """The FastAPI app `EnrollmentService` builds, with placeholders for what it only touches
    per request or once started (engine, publisher, rules, users), read off the real
    composition root instead of a hand-kept list of paths."""
    from sqlalchemy.ext.asyncio import AsyncEngine

    from enrollment_svc.rules import Rules
    from enrollment_svc.service import EnrollmentService
    from services.auth import Users

    try:
        service = EnrollmentService(
            EnrollmentSettings.model_construct(),  # the code's defaults, whatever the environment
            engine=cast(AsyncEngine, object()),
            users=Users({}),
            rules=cast(Rules, object()),
        )
    except Exception as exc:
        pytest.fail(
            "EnrollmentService could not be built with placeholders to read its HTTP routes "
            f"(the deploy files' probe and health-check paths are checked against them): {exc!r}"
        )
    return service.app


def _enrollment_routes() -> set[str]:
    return set(_enrollment_app().openapi()["paths"])


def _notifier_app() -> Any:
    """The FastAPI app `NotifierService` builds from the deployed notification configuration,
    with placeholders for the engine, the users and the endpoint secrets (as `_enrollment_app`)."""
    from sqlalchemy.ext.asyncio import AsyncEngine

    from notifier.service import NotifierService
    from services.auth import Users

    try:
        service = NotifierService(
            NotifierSettings.model_construct(),  # the code's defaults, whatever the environment
            config=load_config(NOTIFY_FILE),
            secrets=dict.fromkeys(_notify_secret_names(), "placeholder"),
            engine=cast(AsyncEngine, object()),
            users=Users({}),
        )
    except Exception as exc:
        pytest.fail(
            "NotifierService could not be built with placeholders to read its HTTP routes "
            f"(the deploy files' probe and health-check paths are checked against them): {exc!r}"
        )
    return service.app


def _notifier_routes() -> set[str]:
    return set(_notifier_app().openapi()["paths"])


def _webapp_app(**settings: Any) -> Any:
    """The FastAPI app `WebApp` builds (the code's defaults but ``settings``, a placeholder
    token, no users), as `_enrollment_app`."""
    from services.auth import Users
    from webapp.service import WebApp

    try:
        web = WebApp(WebSettings.model_construct(**settings), users=Users({}), api_token="placeholder")
    except Exception as exc:
        pytest.fail(
            "WebApp could not be built with placeholders to read its HTTP routes "
            f"(the deploy files' probe and health-check paths are checked against them): {exc!r}"
        )
    return web.app


def _webapp_routes() -> set[str]:
    # Its OpenAPI document is not served (pages, not an API), but FastAPI still makes it.
    return set(_webapp_app().openapi()["paths"])


_ENV_KEY = re.compile(r"\b\w+_env\s*:\s*[\"']?([A-Za-z_][A-Za-z0-9_]*)")


def _env_named_in(path: Path) -> set[str]:
    """The environment variables a notification configuration names, read off the raw YAML
    (any `*_env:` key, block or flow style, comments dropped) without `notifier.config`, so
    that a new kind of `*_env` key there cannot go unchecked here."""
    lines = (line.split("#", 1)[0] for line in path.read_text().splitlines())
    return {m.group(1) for line in lines for m in _ENV_KEY.finditer(line)}


def _configured_secret_names(cfg: NotifyConfig) -> set[str]:
    """What the notifier resolves from its environment: each endpoint's `secret_env`, the smtp
    login's `username_env` / `password_env` (`notifier.service.channels_for`)."""
    names = {e.secret_env for r in (*cfg.care_teams, *cfg.practices) for e in r.endpoints if e.secret_env}
    return names | {n for n in (cfg.smtp.username_env, cfg.smtp.password_env) if n}


def _notify_secret_names() -> set[str]:
    """The environment variables the deployed notification configuration names (not settings)."""
    return _configured_secret_names(load_config(NOTIFY_FILE)) | _env_named_in(NOTIFY_FILE)


@dataclass(frozen=True)
class Service:
    """One long-running service as deployed: the same name in compose and in deploy/k8s."""

    name: str  # compose service, k8s Deployment, container, app.kubernetes.io/name
    subcommand: str  # `wpc <subcommand>`
    ports: dict[str, str]  # container port name -> settings field of its default
    file_fields: tuple[str, ...]  # Path settings it reads, each from a mounted volume
    topic_fields: tuple[str, ...]  # topics it publishes or consumes
    routes: Callable[[], set[str]]
    # Its Kubernetes readiness probe: what taking requests needs (services/health.py).
    readiness: str = "/readyz/ingest"
    # It keeps its data in PostgreSQL (so it waits for the schema, and gets WPC_DATABASE_URL).
    stores: bool = True
    # The APIs it calls: URL setting -> the service that serves it.
    api_urls: tuple[tuple[str, str], ...] = ()


LISTENER = Service(
    name="adt-listener",
    subcommand="listener",
    ports={"mllp": "mllp_port", "http": "listener_http_port"},
    file_fields=("senders_file", "tls_cert_file", "tls_key_file", "tls_client_ca_file"),
    topic_fields=("topic_adt_events", "topic_adt_deadletter"),
    routes=_listener_routes,
)
ENROLLMENT = Service(
    name="enrollment",
    subcommand="enrollment",
    ports={"http": "enrollment_http_port"},
    file_fields=("rules_file", "users_file"),
    topic_fields=(
        "topic_adt_events", "topic_enrollment_candidates", "topic_enrollment_events", "topic_enrollment_deadletter",
        "topic_notifications_measures",
    ),
    routes=_enrollment_routes,
)
NOTIFIER = Service(
    name="notifier",
    subcommand="notifier",
    ports={"http": "notifier_http_port"},
    file_fields=("notify_file", "users_file"),
    topic_fields=(
        "topic_adt_events",
        "topic_enrollment_candidates",
        "topic_enrollment_events",
        "topic_notifications_deadletter",
        "topic_notifier_deadletter",
        "topic_notifications_measures",
    ),
    routes=_notifier_routes,
)
WEBAPP = Service(
    name="webapp",
    subcommand="web",
    ports={"http": "web_port"},
    file_fields=("users_file",),
    topic_fields=(),
    routes=_webapp_routes,
    # Readiness: the APIs answer (its pages can show nothing without them); it has no
    # /readyz/ingest meaning of its own.
    readiness="/readyz",
    stores=False,
    api_urls=(("web_listener_url", LISTENER.name), ("web_enrollment_url", ENROLLMENT.name),
              ("web_notifier_url", NOTIFIER.name)),
)
SERVICES = [LISTENER, ENROLLMENT, NOTIFIER, WEBAPP]
each_service = pytest.mark.parametrize("svc", SERVICES, ids=lambda s: s.name)


def _uses_kafka(svc: Service) -> bool:
    """From the code: a service whose settings name topics it publishes or consumes."""
    settings = SETTINGS_OF[svc.name].model_construct()
    return bool(settings.published_topics() or settings.consumed_topics())


# The services with a database, and those with a Kafka principal (and topics, ACLs).
STORES = [s for s in SERVICES if s.stores]
KAFKA_CLIENTS = [s for s in SERVICES if _uses_kafka(s)]
each_store = pytest.mark.parametrize("svc", STORES, ids=lambda s: s.name)
each_kafka_client = pytest.mark.parametrize("svc", KAFKA_CLIENTS, ids=lambda s: s.name)


def test_every_service_is_deployed() -> None:
    """One entry of SERVICES per service settings class (a service added to `wpc` and left
    out here would go unchecked, and likely undeployed), each a `wpc` sub-command of its own."""
    assert sorted(SETTINGS_OF[s.name].__name__ for s in SERVICES) == sorted(m.__name__ for m in SERVICE_SETTINGS)
    assert len({s.subcommand for s in SERVICES}) == len(SERVICES)
    assert all(s.subcommand in COMMANDS for s in SERVICES)
    # The topics each entry names are those its settings publish and consume.
    for s in SERVICES:
        settings = SETTINGS_OF[s.name].model_construct()
        named = {_default(f) for f in s.topic_fields}
        assert named == {*settings.published_topics(), *settings.consumed_topics()}, s.name
    assert WEBAPP in SERVICES and WEBAPP not in KAFKA_CLIENTS and WEBAPP not in STORES


# --- setting names --------------------------------------------------------------------------


def _assert_settings_names(names: set[str], where: str, model: type[ServiceSettings] | None = None) -> None:
    """Each name is a setting: of ``model`` (a service's own environment), else of any service."""
    assert names, f"{where}: no {PREFIX}* variables found (the parser is looking in the wrong place)"
    fields = model.model_fields if model is not None else FIELDS
    owner = model.__name__ if model is not None else "any service's settings"
    for name in sorted(names):
        assert name == name.upper(), f"{where}: {name} is not upper-case"
        field = name[len(PREFIX) :].lower()
        assert field in fields, f"{where}: {name} is not a field of {owner} ({field})"


def test_compose_env_names_are_settings_fields() -> None:
    # The notifier's endpoint secrets are not settings (see the module docstring).
    checked = 0
    for name, svc in _services().items():
        names = {k for k in _compose_env(svc) if k.upper().startswith(PREFIX)} - _notify_secret_names()
        if name in SETTINGS_OF:
            _assert_settings_names(names, f"deploy/compose.yaml {name}", SETTINGS_OF[name])
            checked += 1
        else:
            assert not names, f"deploy/compose.yaml {name}: WPC_ settings in a container that is no wpc-backend"
    assert checked == len(SERVICES) + 1, "the compose services are not named as SETTINGS_OF expects"  # + migrate



def test_configmap_names_are_settings_fields_and_values_are_strings() -> None:
    data = _configmap()
    _assert_settings_names(set(data), "configmap.yaml")
    # The API server rejects a ConfigMap whose values are YAML numbers or booleans.
    assert all(isinstance(v, str) for v in data.values()), data


def test_example_secret_env_names_are_settings_fields() -> None:
    env_secrets = {
        src["secretRef"]["name"]
        for _, c in _containers()
        for src in c.get("envFrom", [])
        if "secretRef" in src
    }
    assert env_secrets, "no container takes its environment from a Secret"
    secrets = _example_secrets()
    names = {k for name in env_secrets for k in secrets[name]}
    # The notifier's endpoint secrets are not settings (see the module docstring).
    _assert_settings_names(names - _notify_secret_names(), "secret.example.yaml")
    assert _env_name("database_url") in names


def test_container_env_names_are_settings_fields() -> None:
    for where, container in _containers():
        names = {e["name"] for e in container.get("env", []) if e["name"].upper().startswith(PREFIX)}
        if names:
            _assert_settings_names(names, where, SETTINGS_OF.get(where.split("/")[0]))


def test_every_wpc_name_mentioned_in_deploy_files_is_a_setting() -> None:
    # Comments and the README too: a renamed setting must not survive in the instructions.
    # Or a variable that a notification configuration of deploy/notify names (an endpoint
    # secret): those are read by the notifier, not by the settings.
    named = {n for path in NOTIFY_DIR.glob("*.yaml") for n in _env_named_in(path)}
    assert named >= _notify_secret_names()
    files = [DOCKERFILE, *DEPLOY.rglob("*.yaml"), DEPLOY / "README.md"]
    for path in files:
        names = set(re.findall(rf"\b{PREFIX}[A-Z0-9_]+\b", path.read_text())) - named
        if names:
            _assert_settings_names(names, str(path.relative_to(ROOT)))


def test_database_url_is_secret_not_configmap() -> None:
    assert _env_name("database_url") not in _configmap()


@pytest.mark.parametrize(
    ("env", "model"),
    [
        pytest.param(lambda: _compose_env(_services()["adt-listener"]), ListenerSettings, id="compose-listener"),
        pytest.param(lambda: _compose_env(_services()["migrate"]), ServiceSettings, id="compose-migrate"),
        pytest.param(lambda: _compose_env(_services()["enrollment"]), EnrollmentSettings, id="compose-enrollment"),
        pytest.param(lambda: _compose_env(_services()["notifier"]), NotifierSettings, id="compose-notifier"),
        pytest.param(lambda: _compose_env(_services()["webapp"]), WebSettings, id="compose-webapp"),
        pytest.param(_k8s_listener_env, ListenerSettings, id="k8s-listener"),
        pytest.param(lambda: _k8s_env("enrollment"), EnrollmentSettings, id="k8s-enrollment"),
        pytest.param(lambda: _k8s_env("notifier"), NotifierSettings, id="k8s-notifier"),
        pytest.param(lambda: _k8s_env("webapp"), WebSettings, id="k8s-webapp"),
        pytest.param(lambda: _container_env(_job_container()), ServiceSettings, id="k8s-migrate"),
    ],
)
def test_settings_accept_the_deployed_values(
    env: Any, model: type[ServiceSettings], monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    for name in list(os.environ):
        if name.upper().startswith(PREFIX):
            monkeypatch.delenv(name)
    for name, value in env().items():
        monkeypatch.setenv(name, _interpolate(value))
    settings = model()  # raises on a value of the wrong type (a port "http", log_json "yes!")
    if model is WebSettings:
        # No database for the web app (`wpc web` would try to reach one it was given).
        assert settings.database_url == ""
        assert settings.web_api_token, "WPC_WEB_API_TOKEN: `wpc web` refuses to start without it"
    else:
        assert settings.database_url.startswith("postgresql+asyncpg://")


# --- commands and image ---------------------------------------------------------------------


def _our_compose_services() -> dict[str, dict[str, Any]]:
    return {n: s for n, s in _services().items() if str(s.get("image", "")).startswith(IMAGE_REPO)}


def test_compose_commands_are_wpc_subcommands() -> None:
    ours = _our_compose_services()
    assert {"migrate", *(s.name for s in SERVICES)} <= set(ours)
    for name, svc in ours.items():
        assert "entrypoint" not in svc, f"{name} must keep the image's `wpc` entrypoint"
        assert svc["command"][0] in COMMANDS, f"{name}: {svc['command'][0]!r} is not a wpc sub-command"
    assert _services()["migrate"]["command"][0] == "migrate"
    for s in SERVICES:
        assert _services()[s.name]["command"][0] == s.subcommand, s.name


def _k8s_subcommand(container: dict[str, Any]) -> str:
    if "command" in container:  # replaces the ENTRYPOINT: must still be wpc
        assert container["command"][0] == "wpc", container["command"]
        return str([*container["command"][1:], *container.get("args", [])][0])
    return str(container["args"][0])


def _job_container() -> dict[str, Any]:
    (container,) = _one("Job")["spec"]["template"]["spec"]["containers"]
    return cast(dict[str, Any], container)


def test_k8s_commands_are_wpc_subcommands() -> None:
    for where, container in _containers():
        if container["image"].startswith(IMAGE_REPO):
            assert _k8s_subcommand(container) in COMMANDS, where
    for s in SERVICES:
        assert _k8s_subcommand(_container(s.name)) == s.subcommand, s.name
    assert _k8s_subcommand(_job_container()) == "migrate"


def test_dockerfile_entrypoint_is_the_wpc_console_script_and_cmd_a_subcommand() -> None:
    stage = dict(_final_stage())
    assert PYPROJECT["project"]["scripts"]["wpc"] == "wpc.cli:main"
    # Exec form (a JSON array): `wpc` is PID 1 and receives SIGTERM itself.
    assert json.loads(stage["ENTRYPOINT"]) == ["wpc"]
    assert json.loads(stage["CMD"])[0] in COMMANDS


def test_dockerfile_installs_the_project_on_python_311_slim_as_non_root() -> None:
    instructions = _dockerfile()
    assert all(args.startswith("python:3.11-slim") for k, args in instructions if k == "FROM")
    assert any(k == "RUN" and re.search(r"pip install \.(\s|$)", args) for k, args in instructions)
    user = [args for k, args in _final_stage() if k == "USER"][-1]
    uid = user.split(":")[0]
    # Numeric: Kubernetes' runAsNonRoot can only verify a number.
    assert uid.isdigit() and int(uid) != 0, f"USER {user} is not a non-root numeric uid"
    for owner, spec in _pod_specs():
        assert spec["securityContext"]["runAsNonRoot"] is True, owner
        assert spec["securityContext"].get("runAsUser", int(uid)) == int(uid), owner


def test_every_image_of_ours_is_the_pyproject_version() -> None:
    images = {where: c["image"] for where, c in _containers()}
    images |= {f"compose/{n}": s["image"] for n, s in _our_compose_services().items()}
    for s in SERVICES:
        assert images[f"compose/{s.name}"] == IMAGE, s.name
        assert images[f"{s.name}/{s.name}"] == IMAGE, s.name
    for where, image in images.items():
        if image.split(":")[0] == IMAGE_REPO:
            assert image == IMAGE, f"{where}: {image} != {IMAGE}"
    assert all(c["image"] == IMAGE for _, c in _containers()), "k8s runs only our image"


def test_compose_builds_from_the_repository_dockerfile() -> None:
    for name, svc in _our_compose_services().items():
        context = (DEPLOY / svc["build"]).resolve()
        assert context == ROOT, f"{name}: build context {context}"
        assert (context / "Dockerfile").is_file()


def test_dockerignore_keeps_what_pip_install_needs() -> None:
    patterns = [
        line.strip().removeprefix("**/").rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    needed = ["pyproject.toml", PYPROJECT["project"]["readme"]]
    needed += [p.rstrip("*") for p in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]]
    for name in needed:
        assert not any(fnmatch.fnmatch(name, p) for p in patterns), f".dockerignore excludes {name}"
    for name in [".venv", ".git", ".wpc", "__pycache__", ".pytest_cache"]:
        assert any(fnmatch.fnmatch(name, p) for p in patterns), f".dockerignore does not exclude {name}"


# --- ports ----------------------------------------------------------------------------------


def _expected_port(env: dict[str, str], field: str) -> int:
    return int(env.get(_env_name(field), _default(field)))


def test_dockerfile_exposes_the_default_ports() -> None:
    exposed = {int(p.split("/")[0]) for k, args in _final_stage() if k == "EXPOSE" for p in args.split()}
    assert exposed == {_default(f) for s in SERVICES for f in s.ports.values()}
    assert len(exposed) == sum(len(s.ports) for s in SERVICES), "two services share a default port"


@each_service
def test_k8s_container_ports_match_settings(svc: Service) -> None:
    env = _k8s_env(svc.name)
    ports = {p["name"]: p for p in _container(svc.name)["ports"]}
    assert set(ports) == set(svc.ports)
    for name, field in svc.ports.items():
        assert ports[name]["containerPort"] == _expected_port(env, field), name
        assert ports[name].get("protocol", "TCP") == "TCP"


@each_service
def test_compose_published_ports_match_settings(svc: Service) -> None:
    service = _services()[svc.name]
    env = _compose_env(service)
    container_ports = {int(str(p).split(":")[-1].split("/")[0]) for p in service["ports"]}
    assert container_ports == {_expected_port(env, f) for f in svc.ports.values()}


def _compose_healthcheck_url(name: str = "adt-listener") -> tuple[int, str]:
    test = " ".join(_services()[name]["healthcheck"]["test"])
    match = re.search(r"http://[^/:'\"]+:(\d+)(/[^'\"\s]*)", test)
    assert match, test
    return int(match.group(1)), match.group(2)


@each_service
def test_compose_healthcheck_uses_python_on_the_http_port(svc: Service) -> None:
    test = _services()[svc.name]["healthcheck"]["test"]
    assert test[:2] == ["CMD", "python"], "python:3.11-slim has no curl"
    port, path = _compose_healthcheck_url(svc.name)
    assert port == _expected_port(_compose_env(_services()[svc.name]), svc.ports["http"])
    assert path == "/healthz"


def _probes(name: str = "adt-listener") -> dict[str, dict[str, Any]]:
    container = _container(name)
    return {k: container[k]["httpGet"] for k in ("startupProbe", "livenessProbe", "readinessProbe")}


@each_service
def test_k8s_probes_target_the_http_port_with_the_right_meaning(svc: Service) -> None:
    probes = _probes(svc.name)
    named = {p["name"]: p["containerPort"] for p in _container(svc.name)["ports"]}
    for kind, probe in probes.items():
        assert named.get(probe["port"], probe["port"]) == named["http"], kind
    # Liveness must not depend on PostgreSQL/Kafka: an outage would restart every pod.
    assert probes["livenessProbe"]["path"] == "/healthz"
    assert probes["startupProbe"]["path"] == "/healthz"
    # Readiness is what taking traffic needs (PostgreSQL), not /readyz (database and Kafka):
    # the listener ACKs from its outbox while Kafka is down (services/health.py); the APIs of
    # the enrollment service and the notifier need PostgreSQL alone, and readiness does not
    # stop them consuming (the reasons are in the comments of enrollment.yaml, notifier.yaml).
    # The web app's readiness is the APIs answering (webapp.yaml).
    assert probes["readinessProbe"]["path"] == svc.readiness
    annotations = _pod(svc.name)["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == named["http"]


@each_service
def test_probe_and_healthcheck_paths_are_routes_of_the_service(svc: Service) -> None:
    routes = svc.routes()
    paths = {p["path"] for p in _probes(svc.name).values()}
    paths.add(_compose_healthcheck_url(svc.name)[1])
    paths.add(_pod(svc.name)["metadata"]["annotations"]["prometheus.io/path"])
    assert paths <= routes, f"not served by {svc.name}: {sorted(paths - routes)}"


@pytest.mark.parametrize(
    ("name", "app"),
    [
        pytest.param("enrollment", _enrollment_app, id="enrollment"),
        pytest.param("notifier", _notifier_app, id="notifier"),
    ],
)
async def test_readiness_probe_path_checks_only_the_database(name: str, app: Callable[[], Any]) -> None:
    """enrollment.yaml's and notifier.yaml's readiness probe is chosen because it does not
    depend on Kafka."""
    import httpx

    path = _probes(name)["readinessProbe"]["path"]
    transport = httpx.ASGITransport(app=app())
    async with httpx.AsyncClient(transport=transport, base_url=f"http://{name}") as client:
        response = await client.get(path)
    # The placeholder engine fails its check: 503 with the checks named. A broker check here
    # would also try to reach Kafka; the answer must name the database alone.
    assert response.status_code == 503, response.text
    assert set(response.json()["checks"]) == {"database"}


async def test_webapp_readiness_is_the_apis_it_calls() -> None:
    """webapp.yaml's readiness probe answers 503 while the APIs do not answer, naming each API
    the web app is configured to call (nothing listens on port 1 here)."""
    import httpx

    nowhere = {field: "http://127.0.0.1:1" for field, _ in WEBAPP.api_urls}
    transport = httpx.ASGITransport(app=_webapp_app(**nowhere))
    async with httpx.AsyncClient(transport=transport, base_url="http://webapp") as client:
        response = await client.get(_probes(WEBAPP.name)["readinessProbe"]["path"])
    assert response.status_code == 503, response.text
    checks = response.json()["checks"]
    assert checks == {field.removeprefix("web_").removesuffix("_url"): "failing" for field, _ in WEBAPP.api_urls}


def _k8s_services() -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d["spec"] for _, d in _all_k8s_docs() if d["kind"] == "Service"}


def test_every_k8s_service_selects_one_deployment_and_names_its_ports() -> None:
    deployments = [d["metadata"]["name"] for _, d in _all_k8s_docs() if d["kind"] == "Deployment"]
    assert set(deployments) == {s.name for s in SERVICES}
    for name, spec in _k8s_services().items():
        selected = [d for d in deployments if spec["selector"].items() <= _pod(d)["metadata"]["labels"].items()]
        assert len(selected) == 1, f"Service {name} selects {selected}"
        port_names = {p["name"] for p in _container(selected[0])["ports"]}
        assert {p["targetPort"] for p in spec["ports"]} <= port_names, name


@each_service
def test_k8s_services_of_each_deployment(svc: Service) -> None:
    pod_labels = _pod(svc.name)["metadata"]["labels"]
    mine = [s for s in _k8s_services().values() if s["selector"].items() <= pod_labels.items()]
    by_target = {p["targetPort"]: s for s in mine for p in s["ports"]}
    assert set(by_target) == set(svc.ports), f"{svc.name}: ports without a Service"
    # HTTP stays inside the cluster (an ingress goes in front); MLLP is plain TCP for hospitals.
    assert by_target["http"].get("type", "ClusterIP") == "ClusterIP"
    if "mllp" in by_target:
        mllp = by_target["mllp"]
        assert mllp["type"] == "LoadBalancer" and mllp["ports"][0]["protocol"] == "TCP"


# --- k8s deployment shape -------------------------------------------------------------------


@each_service
def test_deployment_shape(svc: Service) -> None:
    deployment = _one("Deployment", svc.name)
    spec = deployment["spec"]["template"]["spec"]
    # Two replicas; for the enrollment service two members of one consumer group.
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["selector"]["matchLabels"].items() <= (
        deployment["spec"]["template"]["metadata"]["labels"].items()
    )
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert spec["terminationGracePeriodSeconds"] == 30
    assert spec["automountServiceAccountToken"] is False
    container = _container(svc.name)
    assert container["name"] == svc.name
    assert "preStop" not in container.get("lifecycle", {})
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]


@pytest.mark.parametrize("svc", [s for s in SERVICES if s is not LISTENER], ids=lambda s: s.name)
def test_service_runs_with_the_listeners_security_context(svc: Service) -> None:
    listener, pod = _pod(LISTENER.name)["spec"], _pod(svc.name)["spec"]
    assert pod["securityContext"] == listener["securityContext"]
    assert _container(svc.name)["securityContext"] == _container(LISTENER.name)["securityContext"]
    assert listener["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert _container(svc.name)["securityContext"]["capabilities"]["drop"] == ["ALL"]


def test_pods_have_a_read_only_root_and_a_writable_tmp() -> None:
    for owner, spec in _pod_specs():
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for c in spec["containers"]:
            assert c["securityContext"]["readOnlyRootFilesystem"] is True, owner
            assert c["securityContext"]["allowPrivilegeEscalation"] is False, owner
            tmp = [m for m in c.get("volumeMounts", []) if m["mountPath"] == "/tmp"]
            assert tmp and "emptyDir" in volumes[tmp[0]["name"]], f"{owner}: /tmp is not an emptyDir"


def _path_fields() -> set[str]:
    return {
        f
        for f, info in FIELDS.items()
        if info.annotation is Path or Path in typing.get_args(info.annotation)
    }


def test_service_file_fields_are_path_settings() -> None:
    # A wrong field name here would make the two tests below check nothing.
    for s in SERVICES:
        assert set(s.file_fields) <= _path_fields(), s.name


def _kustomizations() -> Iterator[tuple[Path, dict[str, Any]]]:
    """deploy/k8s/kustomization.yaml and every kustomization it lists as a resource directory."""
    pending = [K8S]
    while pending:
        directory = pending.pop()
        kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
        yield directory, kustomization
        for resource in kustomization.get("resources", []):
            if (directory / resource).is_dir():
                pending.append((directory / resource).resolve())


def _generated_configmaps() -> dict[str, dict[str, Path]]:
    """ConfigMaps of kustomize's configMapGenerator: name -> {key: source file}."""
    generated: dict[str, dict[str, Path]] = {}
    for directory, kustomization in _kustomizations():
        for generator in kustomization.get("configMapGenerator", []):
            files = {}
            for entry in generator.get("files", []):
                key, _, source = entry.rpartition("=")
                files[key or Path(source).name] = (directory / source).resolve()
            generated[generator["name"]] = files
    return generated


def _mounted_keys(deployment: str) -> dict[str, tuple[str, set[str]]]:
    """Mount directory -> (what it is, the file names in it) for Secret and ConfigMap volumes."""
    volumes = {v["name"]: v for v in _pod(deployment)["spec"]["volumes"]}
    secrets, configmaps = _example_secrets(), _generated_configmaps()
    configmaps |= {d["metadata"]["name"]: dict(d["data"]) for _, d in _all_k8s_docs() if d["kind"] == "ConfigMap"}
    mounted = {}
    for m in _container(deployment)["volumeMounts"]:
        volume = volumes[m["name"]]
        if "secret" in volume:
            name = volume["secret"]["secretName"]
            mounted[m["mountPath"].rstrip("/")] = (f"Secret {name}", set(secrets[name]))
        elif "configMap" in volume:
            name = volume["configMap"]["name"]
            mounted[m["mountPath"].rstrip("/")] = (f"ConfigMap {name}", set(configmaps[name]))
    return mounted


@each_service
def test_file_settings_point_into_mounted_volumes(svc: Service) -> None:
    """Every file the service reads is set and names a key of a Secret or ConfigMap mounted
    (read-only) at its directory."""
    env = _k8s_env(svc.name)
    mounted = _mounted_keys(svc.name)
    read_only = {m["mountPath"].rstrip("/") for m in _container(svc.name)["volumeMounts"] if m.get("readOnly")}
    for field in svc.file_fields:
        assert _env_name(field) in env, f"{svc.name}: {_env_name(field)} is not set"
        path = Path(env[_env_name(field)])
        assert str(path.parent) in mounted, f"{svc.name} {field}: {path.parent} is not a mounted Secret or ConfigMap"
        source, keys = mounted[str(path.parent)]
        assert path.name in keys, f"{svc.name} {field}: no key {path.name} in {source}"
        assert str(path.parent) in read_only, f"{svc.name} {field}: {path.parent} is mounted writable"


def test_credential_files_are_from_secrets_and_configuration_files_from_configmaps() -> None:
    # Credentials and keys never go in a ConfigMap; the rules and the notification
    # configuration do (program staff edit them; the latter names its secrets, holds none).
    kinds = {}
    for s in SERVICES:
        env, mounted = _k8s_env(s.name), _mounted_keys(s.name)
        for field in s.file_fields:
            kinds[s.name, field] = mounted[str(Path(env[_env_name(field)]).parent)][0].split()[0]
    assert kinds == {(LISTENER.name, f): "Secret" for f in LISTENER.file_fields} | {
        (ENROLLMENT.name, "users_file"): "Secret",
        (ENROLLMENT.name, "rules_file"): "ConfigMap",
        (NOTIFIER.name, "users_file"): "Secret",
        (NOTIFIER.name, "notify_file"): "ConfigMap",
        (WEBAPP.name, "users_file"): "Secret",
    }


def test_example_senders_file_loads_and_is_not_open(tmp_path: Path) -> None:
    # An empty senders list means "open listener": the example must not be that.
    path = Path(_configmap()[_env_name("senders_file")])
    local = tmp_path / path.name
    local.write_text(_mounted_secret_file("adt-listener", path))
    senders = load_senders(local)
    assert not senders.open
    assert senders.by_token("CHANGE-ME") is None


def _mounted_secret_file(deployment: str, path: Path) -> str:
    """The example Secret's text of the file a container sees at `path`."""
    mounts = {m["mountPath"].rstrip("/"): m["name"] for m in _container(deployment)["volumeMounts"]}
    volumes = {v["name"]: v for v in _pod(deployment)["spec"]["volumes"]}
    secret = volumes[mounts[str(path.parent)]]["secret"]["secretName"]
    return str(_example_secrets()[secret][path.name])


def test_example_users_secret_loads_and_authenticates_no_known_token(tmp_path: Path) -> None:
    path = Path(_k8s_env("enrollment")[_env_name("users_file")])
    local = tmp_path / path.name
    local.write_text(_mounted_secret_file("enrollment", path))
    users = load_users(local)  # raises on a malformed file or an unknown role
    entries = yaml.safe_load(local.read_text())
    assert entries, "the example shows the format with at least one user"
    web_token = _example_secrets()["wpc-web"][_env_name("web_api_token")]
    for token in (EXAMPLE_USER_TOKEN, EXAMPLE_WEBAPP_TOKEN, web_token, "CHANGE-ME", "",
                  "REPLACE-WITH-SHA256-HEX-OF-ITS-TOKEN"):
        assert users.authenticate(token) is None, f"the k8s example accepts the public token {token!r}"
    # The web app's own entry, for its WPC_WEB_API_TOKEN (the example shows where it goes).
    assert [e["roles"] for e in entries if "webapp" in e["roles"]] == [["webapp"]]
    def digests(users: list[dict[str, Any]]) -> set[str]:
        return {str(e["token_sha256"]).lower() for e in users if "token_sha256" in e}

    assert not digests(yaml.safe_load(EXAMPLE_USERS_FILE.read_text())) & digests(entries)


@pytest.mark.parametrize("svc", [NOTIFIER, WEBAPP], ids=lambda s: s.name)
def test_users_are_the_enrollment_services(svc: Service) -> None:
    """One users file for both APIs (services/auth.py), and for the web app's sign-in (a user
    signed in there must be one the APIs know): the same path, from the same Secret in k8s
    and the same host file in compose, mounted read-only."""
    path = _k8s_env(svc.name)[_env_name("users_file")]
    assert path == _k8s_env(ENROLLMENT.name)[_env_name("users_file")]
    directory = str(Path(path).parent)
    assert _mounted_keys(svc.name)[directory] == _mounted_keys(ENROLLMENT.name)[directory]
    compose = [_compose_env(_services()[s.name])[_env_name("users_file")] for s in (svc, ENROLLMENT)]
    assert compose[0] == compose[1]
    assert _compose_mounts(svc.name)[compose[0]] == _compose_mounts(ENROLLMENT.name)[compose[1]]
    assert _compose_mounts(svc.name)[compose[0]] == (EXAMPLE_USERS_FILE.resolve(), True)


def test_users_example_file_authenticates_its_documented_placeholder_token() -> None:
    users = load_users(EXAMPLE_USERS_FILE)
    user = users.authenticate(EXAMPLE_USER_TOKEN)
    assert user is not None, f"{EXAMPLE_USERS_FILE.name}: token_sha256 is not sha256({EXAMPLE_USER_TOKEN!r})"
    assert users.authenticate(EXAMPLE_USER_TOKEN + "x") is None
    # An API user, the web app's principal and a person who signs in to the web app.
    assert len(yaml.safe_load(EXAMPLE_USERS_FILE.read_text())) == 3, "three example users"
    text, readme = EXAMPLE_USERS_FILE.read_text(), (DEPLOY / "README.md").read_text()
    for public in (EXAMPLE_USER_TOKEN, EXAMPLE_WEBAPP_TOKEN, *EXAMPLE_SIGN_IN):
        assert public in text and public in readme, public
    assert "MUST BE REPLACED" in text


def test_users_example_file_lets_the_web_app_in_and_its_user_sign_in() -> None:
    """Compose's web app authenticates to the APIs with its default token (the example's
    `webapp` entry: role webapp only), and the example person signs in with the documented
    password (a password_scrypt made by `wpc hash-password`)."""
    users = load_users(EXAMPLE_USERS_FILE)
    token = _interpolate(_compose_env(_services()[WEBAPP.name])[_env_name("web_api_token")])
    assert token == EXAMPLE_WEBAPP_TOKEN
    principal = users.authenticate(token)
    assert principal is not None and principal.roles == {"webapp"}
    name, password = EXAMPLE_SIGN_IN
    person = users.sign_in(name, password)
    assert person is not None and person.programs(), f"{name} signs in and sees a program"
    assert users.sign_in(name, password + "x") is None
    assert users.sign_in(principal.name, password) is None, "the web app's principal has no password"


def test_referenced_configmaps_and_secrets_exist() -> None:
    secrets = set(_example_secrets())
    configmaps = {d["metadata"]["name"] for _, d in _all_k8s_docs() if d["kind"] == "ConfigMap"}
    for owner, spec in _pod_specs():
        for c in spec["containers"]:
            for src in c.get("envFrom", []):
                if "configMapRef" in src:
                    assert src["configMapRef"]["name"] in configmaps, owner
                else:
                    assert src["secretRef"]["name"] in secrets, owner
        for v in spec.get("volumes", []):
            if "secret" in v:
                assert v["secret"]["secretName"] in secrets, owner
            if "configMap" in v:
                assert v["configMap"]["name"] in configmaps | set(_generated_configmaps()), owner


@each_service
def test_pdb_keeps_one_pod_of_each_service(svc: Service) -> None:
    pdb = _one("PodDisruptionBudget", svc.name)["spec"]
    pod_labels = _pod(svc.name)["metadata"]["labels"]
    assert pdb["minAvailable"] == 1
    assert pdb["selector"]["matchLabels"].items() <= pod_labels.items()
    others = [s.name for s in SERVICES if s is not svc]
    for other in others:
        assert not pdb["selector"]["matchLabels"].items() <= _pod(other)["metadata"]["labels"].items()


@pytest.mark.parametrize(
    ("deployment", "field", "source"),
    [
        pytest.param(ENROLLMENT.name, "rules_file", RULES_FILE, id="rules"),
        pytest.param(NOTIFIER.name, "notify_file", NOTIFY_FILE, id="notify"),
    ],
)
def test_configuration_configmap_is_generated_from_the_county_file(deployment: str, field: str, source: Path) -> None:
    """The enrollment pods mount a ConfigMap kustomize generates from deploy/rules/wpc-rules.yaml,
    the notifier pods one from deploy/notify/wpc-notify.yaml, under a content-hash name, so a
    change rolls the pods without a new image."""
    volumes = {v["name"]: v for v in _pod(deployment)["spec"]["volumes"]}
    mounts = {m["mountPath"].rstrip("/"): m["name"] for m in _container(deployment)["volumeMounts"]}
    path = Path(_k8s_env(deployment)[_env_name(field)])
    name = volumes[mounts[str(path.parent)]]["configMap"]["name"]
    generated = _generated_configmaps()
    assert name in generated, f"ConfigMap {name} is not made by a configMapGenerator"
    assert generated[name] == {path.name: source.resolve()}
    for directory, kustomization in _kustomizations():
        if any(g["name"] == name for g in kustomization.get("configMapGenerator", [])):
            # `kubectl apply -k` only reads generator files in or below the kustomization's own
            # directory (kustomize's default load restrictor).
            assert source.resolve().is_relative_to(directory), f"{directory}: generator file outside it"
            options = {**kustomization.get("generatorOptions", {})}
            for g in kustomization["configMapGenerator"]:
                if g["name"] == name:
                    options |= g.get("options", {})
            assert not options.get("disableNameSuffixHash"), "without the hash a change rolls no pod"
            assert kustomization.get("namespace") in (None, _one("Namespace")["metadata"]["name"])


def test_rules_file_deployed_is_valid_rules() -> None:
    # Written separately (the county's example); the deployments mount exactly this path.
    assert RULES_FILE.is_file(), f"{RULES_FILE.relative_to(ROOT)} is missing"
    rules = load_rules(RULES_FILE)
    assert rules.version


def test_notify_file_deployed_is_a_valid_notification_configuration() -> None:
    # What `wpc notifier` does at start with WPC_NOTIFY_FILE (notifier.service.config_of).
    assert NOTIFY_FILE.is_file(), f"{NOTIFY_FILE.relative_to(ROOT)} is missing"
    cfg = load_config(NOTIFY_FILE)
    assert cfg.version and cfg.digest


def test_notify_file_agrees_with_the_rules_deployed_beside_it() -> None:
    """The two files are deployed together: the notifier's Part 2 facilities are the rules'
    (a facility missing here would have its SUD encounters told without consent), and each
    care team's region names facilities the rules know."""
    cfg, rules = load_config(NOTIFY_FILE), load_rules(RULES_FILE)
    registry = rules.site.facilities
    assert set(cfg.part2.facilities) == {fid for fid, f in registry.items() if f.part2}
    for team in cfg.care_teams:
        assert set(team.facilities) <= set(registry), f"{team.id}: {set(team.facilities) - set(registry)}"


def test_notify_secret_names_are_read_completely_and_are_not_settings() -> None:
    names = _configured_secret_names(load_config(NOTIFY_FILE))
    assert names, "the example names no secrets: the checks of their provision would check nothing"
    # The raw file and the configuration model agree: no `*_env` key the model ignores.
    assert names == _env_named_in(NOTIFY_FILE)
    # A secret named like a setting would be read by the settings too, or shadow one.
    assert not names & {_env_name(f) for f in FIELDS}, names


def _compose_notifier_env() -> dict[str, str]:
    return {k: _interpolate(v) for k, v in _compose_env(_services()[NOTIFIER.name]).items()}


@pytest.mark.parametrize(
    ("env", "placeholder"),
    [
        pytest.param(_compose_notifier_env, "dev-only", id="compose"),
        pytest.param(lambda: _k8s_env(NOTIFIER.name), "CHANGE-ME", id="k8s"),
    ],
)
def test_notifier_is_given_every_secret_its_configuration_names(
    env: Callable[[], dict[str, str]], placeholder: str
) -> None:
    """Each `secret_env` / `username_env` / `password_env` of the deployed notification
    configuration reaches the notifier, with an obviously fake example value."""
    given = env()
    cfg = load_config(NOTIFY_FILE)
    for name in sorted(_notify_secret_names()):
        assert given.get(name), f"{name} is not given to the notifier"
        assert placeholder in given[name], f"{name}: the example value {given[name]!r} does not look fake"
    # As the notifier resolves them at start (a missing secret_env raises ValueError there).
    for recipient in (*cfg.care_teams, *cfg.practices):
        endpoints_of(recipient, given)


def test_compose_notifier_secrets_can_be_set_from_the_shell() -> None:
    # As POSTGRES_PASSWORD: a dev-only default, the real value from the shell or deploy/.env.
    env = _compose_env(_services()[NOTIFIER.name])
    for name in sorted(_notify_secret_names()):
        assert re.fullmatch(rf"\$\{{{name}:-[^}}]+\}}", env[name]), f"{name}: {env[name]}"


def test_only_the_notifier_is_given_the_endpoint_secrets() -> None:
    names = _notify_secret_names()
    for where, container in _containers():
        if where != f"{NOTIFIER.name}/{NOTIFIER.name}":
            assert not set(_container_env(container)) & names, f"{where} sees the notifier's secrets"
    for name, service in _services().items():
        if name != NOTIFIER.name:
            assert not set(_compose_env(service)) & names, f"compose {name} sees the notifier's secrets"
    assert not set(_configmap()) & names, "the notifier's secrets are in a ConfigMap"


def test_kustomization_lists_every_manifest_but_the_example_secret() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    on_disk = {p.name for p in K8S.glob("*.yaml")} | {p.name for p in K8S.glob("*.yml")}
    files = {r for r in kustomization["resources"] if not (K8S / r).is_dir()}
    directories = {r for r in kustomization["resources"] if (K8S / r).is_dir()}
    assert files == on_disk - {"kustomization.yaml", "secret.example.yaml"}
    assert directories == {"../rules", "../notify"}
    assert all((K8S / d / "kustomization.yaml").is_file() for d in directories)
    assert "secret.example.yaml" in (DEPLOY / "README.md").read_text()
    namespace = _one("Namespace")["metadata"]["name"]
    assert kustomization["namespace"] == namespace
    for name, doc in _all_k8s_docs():
        if doc["kind"] not in {"Namespace", "Kustomization"}:
            assert doc["metadata"].get("namespace") == namespace, f"{name}: {doc['metadata']['name']}"


# --- compose wiring -------------------------------------------------------------------------


@each_service
def test_compose_service_waits_for_its_dependencies(svc: Service) -> None:
    services = _services()
    depends = services[svc.name]["depends_on"]
    if svc.stores:
        assert depends["postgres"]["condition"] == "service_healthy"
        assert depends["migrate"]["condition"] == "service_completed_successfully"
    if svc in KAFKA_CLIENTS:
        assert depends["kafka"]["condition"] == "service_healthy"
    # The web app: the APIs it calls, once they answer (its readiness is theirs).
    for _, api in svc.api_urls:
        assert depends[api]["condition"] == "service_healthy", api
    if not svc.stores and svc not in KAFKA_CLIENTS:
        assert set(depends) == {api for _, api in svc.api_urls}, f"{svc.name} waits for what it does not use"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    for name, service in services.items():
        for dep, cond in (service.get("depends_on") or {}).items():
            if cond["condition"] == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep}, which has no healthcheck"
            if cond["condition"] == "service_completed_successfully":
                # A restart policy would run a one-shot forever and the waiter never starts.
                assert services[dep].get("restart", "no") == "no", dep


def _kafka_nodes() -> dict[str, dict[str, str]]:
    """The compose services that run a Kafka broker: name -> environment."""
    return {n: _compose_env(s) for n, s in _services().items()
            if s.get("image", "").startswith("apache/kafka:") and "KAFKA_NODE_ID" in _compose_env(s)}


@each_kafka_client
def test_compose_kafka_is_kraft_and_the_service_reaches_it(svc: Service) -> None:
    services = _services()
    nodes = _kafka_nodes()
    advertised: set[str] = set()
    for kafka in nodes.values():
        assert set(kafka["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
        advertised |= {a.split("://", 1)[1] for a in kafka["KAFKA_ADVERTISED_LISTENERS"].split(",")}
    bootstrap = _compose_env(services[svc.name])[_env_name("kafka_bootstrap_servers")]
    assert {s.split(":")[0] for s in bootstrap.split(",")} == set(nodes), "bootstrap from every node"
    for server in bootstrap.split(","):
        assert server in advertised, f"{server} is not an advertised Kafka listener {advertised}"
        assert server.split(":")[0] in services
    for node in nodes:
        assert services[svc.name]["depends_on"][node]["condition"] == "service_healthy", node


def test_compose_kafka_keeps_what_it_acknowledged() -> None:
    """Three nodes of one KRaft cluster; every topic (ours, by the topic job, and the brokers'
    internal ones) on three replicas, acknowledged with two in sync, no unclean election: a
    record the relay saw acknowledged (acks=all) survives the loss of any one node."""
    nodes = _kafka_nodes()
    assert len(nodes) == 3
    ids = {env["KAFKA_NODE_ID"] for env in nodes.values()}
    assert len(ids) == 3 and len({env["CLUSTER_ID"] for env in nodes.values()}) == 1
    for env in nodes.values():
        voters = {v.split("@")[1].split(":")[0] for v in env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(",")}
        assert voters == set(nodes)
        assert env["KAFKA_DEFAULT_REPLICATION_FACTOR"] == "3"
        assert env["KAFKA_MIN_INSYNC_REPLICAS"] == "2"
        assert env["KAFKA_UNCLEAN_LEADER_ELECTION_ENABLE"] == "false"
        assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "3"
        assert env["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"] == "3"
        assert env["KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"] == "2"
    creator, created = _compose_created_topics()
    script = " ".join(_services()[creator]["command"])
    variables = dict(re.findall(r"(\w+)='([^']*)'", script))
    commands = [c for c in script.split("&&") if "kafka-topics.sh" in c]
    assert len(commands) == len(created)
    for command in commands:
        flags = re.sub(r"\$\$(\w+)", lambda m: variables[m.group(1)], command)
        topic = re.search(r"--topic\s+(\S+)", flags)
        assert topic is not None
        assert re.search(r"--replication-factor\s+3\b", flags), topic.group(1)
        assert "--config min.insync.replicas=2" in flags, topic.group(1)
        assert "--config unclean.leader.election.enable=false" in flags, topic.group(1)
        assert all(node in _services()[creator]["depends_on"] for node in nodes)


def test_deployed_producers_are_idempotent_and_the_embedded_default_is_not() -> None:
    # Tansu (the embedded broker of `wpc up`) has no idempotent producer; Kafka has.
    assert _default("kafka_idempotence") is False
    assert _configmap()[_env_name("kafka_idempotence")] == "true"
    for s in KAFKA_CLIENTS:
        assert _compose_env(_services()[s.name])[_env_name("kafka_idempotence")] == "true", s.name


def test_k8s_topics_are_documented_durable() -> None:
    # Kafka is outside the manifests: deploy/README.md says how to create the topics.
    readme = (DEPLOY / "README.md").read_text()
    for flag in ("--replication-factor 3", "min.insync.replicas=2", "unclean.leader.election.enable=false"):
        assert flag in readme, flag


@each_service
def test_the_drain_bound_is_within_the_grace_before_sigkill(svc: Service) -> None:
    """The service's own bound on stopping (WPC_SHUTDOWN_TIMEOUT_S) ends before the
    orchestrator's SIGKILL, so the last word is ours (what did not finish, logged)."""
    grace = _pod(svc.name)["spec"]["terminationGracePeriodSeconds"]
    for env in (_k8s_env(svc.name), _compose_env(_services()[svc.name])):
        bound = float(env.get(_env_name("shutdown_timeout_s"), _default("shutdown_timeout_s")))
        assert bound < grace, (svc.name, bound, grace)


def test_compose_database_url_points_at_the_postgres_service() -> None:
    services = _services()
    pg = _compose_env(services["postgres"])
    for name in ("migrate", *(s.name for s in STORES)):
        url = make_url(_interpolate(_compose_env(services[name])[_env_name("database_url")]))
        assert url.host == "postgres" and url.host in services, name
        assert url.username == pg["POSTGRES_USER"] and url.database == pg["POSTGRES_DB"], name
        assert url.password == _interpolate(pg["POSTGRES_PASSWORD"]), name


def _compose_created_topics() -> tuple[str, set[str]]:
    services = _services()
    creators = [n for n, s in services.items() if "kafka-topics.sh" in " ".join(s.get("command") or [])]
    assert len(creators) == 1
    (creator,) = creators
    return creator, set(re.findall(r"--topic\s+(\S+)", " ".join(services[creator]["command"])))


def _compose_used_topics() -> set[str]:
    used = set()
    for s in SERVICES:
        env = _compose_env(_services()[s.name])
        used |= {env.get(_env_name(f), _default(f)) for f in s.topic_fields}
    return used


def test_compose_creates_the_topics_the_services_use() -> None:
    _, created = _compose_created_topics()
    assert created == _compose_used_topics()
    # The code's defaults: what runs when a variable is left out.
    assert created == {_default(f) for s in SERVICES for f in s.topic_fields}


@each_kafka_client
def test_compose_services_wait_for_every_topic(svc: Service) -> None:
    # The setup job creates the topics and each principal's ACLs: a service's relay and
    # consumers need both before they start.
    creator, _ = _compose_created_topics()
    condition = _services()[svc.name]["depends_on"][creator]["condition"]
    assert condition == "service_completed_successfully"


def test_k8s_topics_are_the_ones_compose_creates() -> None:
    # deploy/README.md tells operators to create the same topics on their Kafka.
    _, created = _compose_created_topics()
    for s in SERVICES:
        env = _k8s_env(s.name)
        assert {env.get(_env_name(f), _default(f)) for f in s.topic_fields} <= created, s.name
    readme = (DEPLOY / "README.md").read_text()
    assert all(f"`{topic}`" in readme for topic in created)


@pytest.mark.parametrize(
    ("name", "field"),
    [("enrollment", "enrollment_group_id"), ("notifier", "notifier_group_id")],
)
def test_consumer_group_is_the_same_in_compose_and_k8s(name: str, field: str) -> None:
    compose = _compose_env(_services()[name]).get(_env_name(field), _default(field))
    k8s = _k8s_env(name).get(_env_name(field), _default(field))
    assert compose == k8s == _default(field)


# --- one Kafka principal per service, with ACLs for its own topics ------------------------------

Acls = dict[str, dict[tuple[str, str], set[str]]]  # principal -> (resource type, name) -> operations


def _compose_acls() -> Acls:
    """What the compose setup job's kafka-acls commands allow, by principal."""
    creator, _ = _compose_created_topics()
    acls: Acls = {}
    for command in " ".join(_services()[creator]["command"]).split("&&"):
        if "kafka-acls.sh" not in command:
            continue
        assert "--add" in command and "--deny-principal" not in command, command
        (principal,) = re.findall(r"--allow-principal\s+User:(\S+)", command)
        resources = re.findall(r"--(topic|group|cluster|transactional-id)\s+(\S+)", command)
        assert len(resources) == 1, f"one resource per command: {command}"
        ops = set(re.findall(r"--operation\s+(\S+)", command))
        assert "--resource-pattern-type" not in command, "literal names only"
        acls.setdefault(principal, {}).setdefault(resources[0], set()).update(ops)
    return acls


def _strimzi_acls() -> Acls:
    """What the Strimzi KafkaUsers of deploy/k8s/kafka allow, by principal."""
    acls: Acls = {}
    for doc in _yaml_docs(K8S / "kafka" / "kafka-users.yaml"):
        assert doc["kind"] == "KafkaUser", doc["kind"]
        assert doc["spec"]["authentication"]["type"] == "scram-sha-512"
        assert doc["spec"]["authorization"]["type"] == "simple"
        for acl in doc["spec"]["authorization"]["acls"]:
            resource = acl["resource"]
            assert resource.get("patternType", "literal") == "literal", resource
            assert acl.get("type", "allow") == "allow", acl
            key = (resource["type"], resource["name"])
            acls.setdefault(doc["metadata"]["name"], {}).setdefault(key, set()).update(acl["operations"])
    return acls


def _expected_acls(model: type[ServiceSettings], env: dict[str, str]) -> dict[tuple[str, str], set[str]]:
    """From the code: the service writes the topics it publishes (no one else does), reads
    the topics it consumes and its groups, and describes the groups that read its topics
    (its relay reads their committed offsets: services/replay.py)."""
    from services.replay import retention_of

    settings = model.model_construct(**{f: env[_env_name(f)] for f in model.model_fields if _env_name(f) in env})
    groups = set(settings.consumer_groups())
    readers = retention_of(settings).readers
    expected: dict[tuple[str, str], set[str]] = {}
    for topic in settings.published_topics():
        expected[("topic", topic)] = {"Write", "Describe"}
    for topic in settings.consumed_topics():
        expected[("topic", topic)] = {"Read", "Describe"}
    for group in groups:
        expected[("group", group)] = {"Read", "Describe"}
    for group in {g for t in settings.published_topics() for g in readers.get(t, ())} - groups:
        expected[("group", group)] = {"Describe"}
    return expected


@each_kafka_client
def test_compose_principal_may_write_only_its_topics_and_read_what_it_consumes(svc: Service) -> None:
    env = {k: _interpolate(v) for k, v in _compose_env(_services()[svc.name]).items()}
    principal = env[_env_name("kafka_sasl_username")]
    assert env[_env_name("kafka_security_protocol")] == "SASL_PLAINTEXT"
    assert _compose_acls()[principal] == _expected_acls(SETTINGS_OF[svc.name], env)
    # The brokers know the principal, with the password the service uses.
    jaas = _interpolate(_kafka_nodes()["kafka"]["KAFKA_LISTENER_NAME_CLIENT_PLAIN_SASL_JAAS_CONFIG"])
    assert f'user_{principal}="{env[_env_name("kafka_sasl_password")]}"' in jaas


@each_kafka_client
def test_k8s_principal_may_write_only_its_topics_and_read_what_it_consumes(svc: Service) -> None:
    env = _k8s_env(svc.name)
    principal = env[_env_name("kafka_sasl_username")]
    assert env[_env_name("kafka_security_protocol")] == "SASL_SSL"
    assert _strimzi_acls()[principal] == _expected_acls(SETTINGS_OF[svc.name], env)


def test_every_service_is_a_principal_of_its_own_and_no_one_else_has_rights() -> None:
    compose = {_interpolate(_compose_env(_services()[s.name])[_env_name("kafka_sasl_username")])
               for s in KAFKA_CLIENTS}
    k8s = {_k8s_env(s.name)[_env_name("kafka_sasl_username")] for s in KAFKA_CLIENTS}
    assert len(compose) == len(k8s) == len(KAFKA_CLIENTS)
    assert set(_compose_acls()) == compose
    assert set(_strimzi_acls()) == k8s
    # Every topic's writer is one principal: the service that owns it.
    for acls in (_compose_acls(), _strimzi_acls()):
        writers = [name for grants in acls.values() for (kind, name), ops in grants.items() if "Write" in ops]
        assert len(writers) == len(set(writers)), writers


def test_compose_brokers_refuse_what_no_acl_allows() -> None:
    for env in _kafka_nodes().values():
        assert env["KAFKA_AUTHORIZER_CLASS_NAME"].endswith("StandardAuthorizer")
        assert env["KAFKA_ALLOW_EVERYONE_IF_NO_ACL_FOUND"] == "false"
        assert set(env["KAFKA_SUPER_USERS"].split(";")) == {"User:admin", "User:ANONYMOUS"}
        protocols = dict(kv.split(":") for kv in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
        advertised = {a.split("://")[0] for a in env["KAFKA_ADVERTISED_LISTENERS"].split(",")}
        assert {protocols[a] for a in advertised} == {"SASL_PLAINTEXT"}, "clients must authenticate"


def test_consumer_groups_are_distinct() -> None:
    # The notifier must see every adt.events record, not share them with the enrollment service.
    groups = [
        _k8s_env(n).get(_env_name(f), _default(f))
        for n, f in [("enrollment", "enrollment_group_id"), ("notifier", "notifier_group_id")]
    ]
    assert len(set(groups)) == len(groups), groups


def _compose_mounts(name: str) -> dict[str, tuple[Path, bool]]:
    """Container path -> (host path, read-only) of a compose service's bind mounts."""
    mounts = {}
    for volume in _services()[name].get("volumes", []):
        if isinstance(volume, dict):
            source, target, ro = volume["source"], volume["target"], bool(volume.get("read_only"))
        else:
            source, target, *mode = _interpolate(volume).split(":")
            ro = "ro" in (mode[0].split(",") if mode else [])
        if source.startswith((".", "/")):
            mounts[target] = ((DEPLOY / source).resolve(), ro)
    return mounts


@pytest.mark.parametrize(
    ("name", "config_field", "config_file"),
    [("enrollment", "rules_file", RULES_FILE), ("notifier", "notify_file", NOTIFY_FILE)],
)
def test_compose_mounts_the_configuration_and_users_files_read_only(
    name: str, config_field: str, config_file: Path
) -> None:
    env = _compose_env(_services()[name])
    mounts = _compose_mounts(name)
    expected = {config_field: config_file.resolve(), "users_file": EXAMPLE_USERS_FILE.resolve()}
    for field, host in expected.items():
        target = env.get(_env_name(field))
        assert target, f"{name}: {_env_name(field)} is not set: the image has no fallback"
        assert target in mounts, f"{name} {field}: {target} is not mounted"
        assert mounts[target] == (host, True), f"{name} {field}: {mounts[target]}"
        assert host.is_file()
    assert env[_env_name(config_field)] == _k8s_env(name)[_env_name(config_field)]


@each_service
def test_compose_stop_grace_matches_k8s_termination_grace(svc: Service) -> None:
    grace = _pod(svc.name)["spec"]["terminationGracePeriodSeconds"]
    assert _services()[svc.name]["stop_grace_period"] == f"{grace}s"


def test_every_deployment_waits_for_the_schema_before_starting() -> None:
    """The init container runs `wpc migrate --wait` (a real option of the real parser), with
    the main container's settings, and mounts only volumes the pod has. (The web app has no
    schema: `test_webapp_is_given_no_database_and_no_kafka_principal`.)"""
    for s in STORES:
        spec = _pod(s.name)["spec"]
        (init,) = spec["initContainers"]
        assert init["image"] == IMAGE, s.name
        args = build_parser("migrate").parse_args(init["args"])
        assert args.command == "migrate" and args.wait is True and args.timeout > 0, s.name
        assert init["envFrom"] == _container(s.name)["envFrom"][: len(init["envFrom"])], s.name
        refs = {next(iter(ref.values()))["name"] for ref in init["envFrom"]}
        assert refs == {"wpc-config", "wpc-env"}, s.name  # WPC_DATABASE_URL is in wpc-env
        volumes = {v["name"] for v in spec["volumes"]}
        assert {m["name"] for m in init.get("volumeMounts", [])} <= volumes, s.name
        assert init["securityContext"]["readOnlyRootFilesystem"] is True, s.name


# --- the web app: no data of its own, the APIs through their Services, its secrets ------------

_WEB_SECRETS = ("web_api_token", "web_session_secret")


def test_webapp_is_given_no_database_and_no_kafka_principal() -> None:
    """It works through the APIs only: no database URL (given one, `wpc web` would check it at
    start), no Kafka credentials, no schema to wait for, in compose and in k8s."""
    forbidden = {_env_name(f) for f in ("database_url", "kafka_sasl_username", "kafka_sasl_password")}
    assert not forbidden & set(_compose_env(_services()[WEBAPP.name])), "compose"
    assert not forbidden & set(_k8s_env(WEBAPP.name)), "k8s"
    spec = _pod(WEBAPP.name)["spec"]
    assert "initContainers" not in spec
    secrets = {src["secretRef"]["name"] for src in _container(WEBAPP.name)["envFrom"] if "secretRef" in src}
    assert secrets == {"wpc-web"}
    assert {k for name in secrets for k in _example_secrets()[name]} == {_env_name(f) for f in _WEB_SECRETS}


def _k8s_service_url_target(url: str) -> str:
    """The Deployment a URL inside the cluster reaches: the Service of its host, by its port."""
    parsed = _http_url(url)
    spec = _k8s_services()[parsed.host]
    (port,) = [p for p in spec["ports"] if p["port"] == parsed.port]
    selects = spec["selector"].items()
    (target,) = [s.name for s in SERVICES if selects <= _pod(s.name)["metadata"]["labels"].items()]
    assert port["targetPort"] == "http", url
    return target


def _http_url(url: str) -> Any:
    import httpx

    parsed = httpx.URL(url)
    assert parsed.scheme == "http" and parsed.host and parsed.port, url
    return parsed


def test_webapp_reaches_each_api_through_its_service() -> None:
    """WPC_WEB_*_URL name, in compose, the service and the HTTP port it serves on and, in k8s,
    a Service selecting that Deployment, on the port that targets its `http`."""
    by_name = {s.name: s for s in SERVICES}
    compose, k8s = _compose_env(_services()[WEBAPP.name]), _k8s_env(WEBAPP.name)
    for field, api in WEBAPP.api_urls:
        served = by_name[api]
        url = _http_url(compose[_env_name(field)])
        assert url.host == api and api in _services(), field
        assert url.port == _expected_port(_compose_env(_services()[api]), served.ports["http"]), field
        assert _k8s_service_url_target(k8s[_env_name(field)]) == api, field


def test_webapp_secrets_come_from_a_secret_and_only_it_sees_them() -> None:
    """Its API token and session key: in k8s from the Secret wpc-web (example values that look
    fake), never in the ConfigMap or a manifest's `env`; in compose from the shell (or
    deploy/.env), the session key with no value in the file at all."""
    names = {_env_name(f) for f in _WEB_SECRETS}
    assert not names & set(_configmap())
    for where, container in _containers():
        assert not names & {e["name"] for e in container.get("env", [])}, where
        if where != f"{WEBAPP.name}/{WEBAPP.name}":
            assert not names & set(_container_env(container)), f"{where} sees the web app's secrets"
    example = _example_secrets()["wpc-web"]
    assert all("CHANGE-ME" in example[n] for n in names), example
    # Two replicas sign cookies with one key: a session made by one pod is valid on the other.
    assert _one("Deployment", WEBAPP.name)["spec"]["replicas"] > 1 and example[_env_name("web_session_secret")]
    compose = _compose_env(_services()[WEBAPP.name])
    for name in sorted(names):
        assert re.fullmatch(rf"\$\{{{name}:-[^}}]*\}}", compose[name]), f"{name}: {compose[name]}"
    assert _interpolate(compose[_env_name("web_session_secret")]) == ""
    for name, service in _services().items():
        if name != WEBAPP.name:
            assert not names & set(_compose_env(service)), f"compose {name} sees the web app's secrets"


def test_webapp_cookies_are_secure_behind_tls_in_k8s() -> None:
    # k8s: served by a TLS ingress, so the cookies are Secure; compose: plain HTTP on localhost.
    secure = _env_name("web_secure_cookies")
    assert WebSettings.model_validate({"web_secure_cookies": _k8s_env(WEBAPP.name)[secure]}).web_secure_cookies
    compose = _interpolate(_compose_env(_services()[WEBAPP.name])[secure])
    assert not WebSettings.model_validate({"web_secure_cookies": compose}).web_secure_cookies


def test_webapp_time_zone_is_the_rules_site_zone() -> None:
    # Times on the pages are the site's: the zone of the rules deployed beside it.
    zone = str(load_rules(RULES_FILE).site.timezone)
    for env in (_k8s_env(WEBAPP.name), _compose_env(_services()[WEBAPP.name])):
        assert env.get(_env_name("web_time_zone"), _default("web_time_zone")) == zone


def test_the_image_carries_the_web_apps_templates_and_static_files() -> None:
    """The image installs the project (`pip install .`, not editable): every template and
    static file must be package data, or the pages would fail in a container only."""
    patterns = PYPROJECT["tool"]["setuptools"]["package-data"]["webapp"]
    package = ROOT / "webapp"
    files = [p.relative_to(package).as_posix() for d in ("templates", "static") for p in (package / d).rglob("*")
             if p.is_file() and "__pycache__" not in p.parts]
    assert files
    for name in files:
        assert any(fnmatch.fnmatch(name, pat) and name.count("/") == pat.count("/") for pat in patterns), name
