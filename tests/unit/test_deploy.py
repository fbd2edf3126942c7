"""The deploy files (Dockerfile, deploy/compose.yaml, deploy/k8s/) checked against the code.

There is no container engine on the build machines, so these files are never run in CI;
instead every fact they share with the code is checked here against the code itself:
setting names against `Settings.model_fields`, sub-commands against `services.cli.COMMANDS`,
ports against the `Settings` defaults (or the env value set beside them), probe paths against
the listener's routes, the image tag against `pyproject.toml`.
"""

from __future__ import annotations

import fnmatch
import json
import re
import tomllib
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy.engine import make_url

from adt_listener.senders import load_senders
from services.cli import COMMANDS
from services.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE_FILE = DEPLOY / "compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"
IMAGE_REPO = "ghcr.io/wpc-pilot/wpc-backend"

PREFIX = str(Settings.model_config["env_prefix"])
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
VERSION = PYPROJECT["project"]["version"]
IMAGE = f"{IMAGE_REPO}:{VERSION}"


# --- loading ------------------------------------------------------------------------------


def _default(field: str) -> Any:
    # The code's default, not Settings(): the environment running the tests must not matter.
    return Settings.model_fields[field].default


def _env_name(field: str) -> str:
    return f"{PREFIX}{field}".upper()


def _compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


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
    return [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]


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


def _listener_pod() -> dict[str, Any]:
    """The pod template of the listener Deployment (metadata and spec)."""
    return _one("Deployment", "adt-listener")["spec"]["template"]


def _listener_container() -> dict[str, Any]:
    (container,) = _listener_pod()["spec"]["containers"]
    return container


def _configmap() -> dict[str, str]:
    return _one("ConfigMap", "wpc-config")["data"]


def _example_secrets() -> dict[str, dict[str, Any]]:
    secrets = {}
    for doc in _k8s_docs("secret.example.yaml"):
        assert doc["kind"] == "Secret"
        secrets[doc["metadata"]["name"]] = {**doc.get("data", {}), **doc.get("stringData", {})}
    return secrets


def _k8s_listener_env() -> dict[str, str]:
    """What the listener container sees: envFrom (ConfigMap, example Secrets), then `env`."""
    container = _listener_container()
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


def _listener_routes() -> set[str]:
    try:
        from adt_listener.http import route_paths
    except ImportError as exc:
        pytest.fail(
            "adt_listener.http.route_paths() is needed to check the deploy files' probe and "
            f"health-check paths against the listener's HTTP routes, but it cannot be imported: {exc!r}"
        )
    return set(route_paths())


# --- setting names --------------------------------------------------------------------------


def _assert_settings_names(names: set[str], where: str) -> None:
    assert names, f"{where}: no {PREFIX}* variables found (the parser is looking in the wrong place)"
    for name in sorted(names):
        assert name == name.upper(), f"{where}: {name} is not upper-case"
        field = name[len(PREFIX) :].lower()
        assert field in Settings.model_fields, f"{where}: {name} is not a field of Settings ({field})"


def test_compose_env_names_are_settings_fields() -> None:
    names = {k for svc in _services().values() for k in _compose_env(svc) if k.upper().startswith(PREFIX)}
    _assert_settings_names(names, "deploy/compose.yaml")


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
    _assert_settings_names(names, "secret.example.yaml")
    assert _env_name("database_url") in names


def test_container_env_names_are_settings_fields() -> None:
    for where, container in _containers():
        names = {e["name"] for e in container.get("env", []) if e["name"].upper().startswith(PREFIX)}
        if names:
            _assert_settings_names(names, where)


def test_every_wpc_name_mentioned_in_deploy_files_is_a_setting() -> None:
    # Comments and the README too: a renamed setting must not survive in the instructions.
    files = [DOCKERFILE, *DEPLOY.rglob("*.yaml"), DEPLOY / "README.md"]
    for path in files:
        names = set(re.findall(rf"\b{PREFIX}[A-Z0-9_]+\b", path.read_text()))
        if names:
            _assert_settings_names(names, str(path.relative_to(ROOT)))


def test_database_url_is_secret_not_configmap() -> None:
    assert _env_name("database_url") not in _configmap()


@pytest.mark.parametrize(
    "env",
    [
        pytest.param(lambda: _compose_env(_services()["adt-listener"]), id="compose-listener"),
        pytest.param(lambda: _compose_env(_services()["migrate"]), id="compose-migrate"),
        pytest.param(_k8s_listener_env, id="k8s-listener"),
    ],
)
def test_settings_accept_the_deployed_values(env: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.upper().startswith(PREFIX):
            monkeypatch.delenv(name)
    for name, value in env().items():
        monkeypatch.setenv(name, _interpolate(value))
    settings = Settings()  # raises on a value of the wrong type (a port "http", log_json "yes!")
    assert settings.database_url.startswith("postgresql+asyncpg://")


# --- commands and image ---------------------------------------------------------------------


def _our_compose_services() -> dict[str, dict[str, Any]]:
    return {n: s for n, s in _services().items() if str(s.get("image", "")).startswith(IMAGE_REPO)}


def test_compose_commands_are_wpc_subcommands() -> None:
    ours = _our_compose_services()
    assert {"migrate", "adt-listener"} <= set(ours)
    for name, svc in ours.items():
        assert "entrypoint" not in svc, f"{name} must keep the image's `wpc` entrypoint"
        assert svc["command"][0] in COMMANDS, f"{name}: {svc['command'][0]!r} is not a wpc sub-command"
    assert _services()["migrate"]["command"][0] == "migrate"
    assert _services()["adt-listener"]["command"][0] == "listener"


def _k8s_subcommand(container: dict[str, Any]) -> str:
    if "command" in container:  # replaces the ENTRYPOINT: must still be wpc
        assert container["command"][0] == "wpc", container["command"]
        return str([*container["command"][1:], *container.get("args", [])][0])
    return str(container["args"][0])


def test_k8s_commands_are_wpc_subcommands() -> None:
    for where, container in _containers():
        if container["image"].startswith(IMAGE_REPO):
            assert _k8s_subcommand(container) in COMMANDS, where
    assert _k8s_subcommand(_listener_container()) == "listener"
    (job_container,) = _one("Job")["spec"]["template"]["spec"]["containers"]
    assert _k8s_subcommand(job_container) == "migrate"


def test_dockerfile_entrypoint_is_the_wpc_console_script_and_cmd_a_subcommand() -> None:
    stage = dict(_final_stage())
    assert PYPROJECT["project"]["scripts"]["wpc"] == "services.cli:main"
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
    assert images["compose/adt-listener"] == IMAGE
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

PORT_FIELDS = {"mllp": "mllp_port", "http": "listener_http_port"}


def _expected_port(env: dict[str, str], field: str) -> int:
    return int(env.get(_env_name(field), _default(field)))


def test_dockerfile_exposes_the_default_ports() -> None:
    exposed = {int(p.split("/")[0]) for k, args in _final_stage() if k == "EXPOSE" for p in args.split()}
    assert exposed == {_default(f) for f in PORT_FIELDS.values()}


def test_k8s_container_ports_match_settings() -> None:
    env = _k8s_listener_env()
    ports = {p["name"]: p for p in _listener_container()["ports"]}
    assert set(ports) == set(PORT_FIELDS)
    for name, field in PORT_FIELDS.items():
        assert ports[name]["containerPort"] == _expected_port(env, field), name
        assert ports[name].get("protocol", "TCP") == "TCP"


def test_compose_published_ports_match_settings() -> None:
    svc = _services()["adt-listener"]
    env = _compose_env(svc)
    container_ports = {int(str(p).split(":")[-1].split("/")[0]) for p in svc["ports"]}
    assert container_ports == {_expected_port(env, f) for f in PORT_FIELDS.values()}


def _compose_healthcheck_url() -> tuple[int, str]:
    test = " ".join(_services()["adt-listener"]["healthcheck"]["test"])
    match = re.search(r"http://[^/:'\"]+:(\d+)(/[^'\"\s]*)", test)
    assert match, test
    return int(match.group(1)), match.group(2)


def test_compose_healthcheck_uses_python_on_the_http_port() -> None:
    test = _services()["adt-listener"]["healthcheck"]["test"]
    assert test[:2] == ["CMD", "python"], "python:3.11-slim has no curl"
    port, path = _compose_healthcheck_url()
    assert port == _expected_port(_compose_env(_services()["adt-listener"]), "listener_http_port")
    assert path == "/healthz"


def _probes() -> dict[str, dict[str, Any]]:
    container = _listener_container()
    return {k: container[k]["httpGet"] for k in ("startupProbe", "livenessProbe", "readinessProbe")}


def test_k8s_probes_target_the_http_port_with_the_right_meaning() -> None:
    probes = _probes()
    named = {p["name"]: p["containerPort"] for p in _listener_container()["ports"]}
    for kind, probe in probes.items():
        assert named.get(probe["port"], probe["port"]) == named["http"], kind
    # Liveness must not depend on PostgreSQL/Kafka: an outage would restart every pod.
    assert probes["livenessProbe"]["path"] == "/healthz"
    assert probes["startupProbe"]["path"] == "/healthz"
    # Readiness is what taking traffic needs (PostgreSQL), not /readyz (database and Kafka):
    # the listener ACKs from its outbox while Kafka is down (services/health.py).
    assert probes["readinessProbe"]["path"] == "/readyz/ingest"
    annotations = _listener_pod()["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == named["http"]


def test_probe_and_healthcheck_paths_are_listener_routes() -> None:
    routes = _listener_routes()
    paths = {p["path"] for p in _probes().values()}
    paths.add(_compose_healthcheck_url()[1])
    paths.add(_listener_pod()["metadata"]["annotations"]["prometheus.io/path"])
    assert paths <= routes, f"not served by the listener: {sorted(paths - routes)}"


def test_k8s_services_select_the_listener_and_name_its_ports() -> None:
    pod_labels = _listener_pod()["metadata"]["labels"]
    port_names = {p["name"] for p in _listener_container()["ports"]}
    services = {d["metadata"]["name"]: d["spec"] for _, d in _all_k8s_docs() if d["kind"] == "Service"}
    for name, spec in services.items():
        assert spec["selector"].items() <= pod_labels.items(), name
        assert {p["targetPort"] for p in spec["ports"]} <= port_names, name
    mllp = next(s for s in services.values() if {p["targetPort"] for p in s["ports"]} == {"mllp"})
    http = next(s for s in services.values() if {p["targetPort"] for p in s["ports"]} == {"http"})
    assert mllp["type"] == "LoadBalancer" and mllp["ports"][0]["protocol"] == "TCP"
    assert http.get("type", "ClusterIP") == "ClusterIP"


# --- k8s deployment shape -------------------------------------------------------------------


def test_listener_deployment_shape() -> None:
    deployment = _one("Deployment", "adt-listener")
    spec = deployment["spec"]["template"]["spec"]
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["selector"]["matchLabels"].items() <= (
        deployment["spec"]["template"]["metadata"]["labels"].items()
    )
    assert spec["terminationGracePeriodSeconds"] == 30
    container = _listener_container()
    assert "preStop" not in container.get("lifecycle", {})
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]


def test_pods_have_a_read_only_root_and_a_writable_tmp() -> None:
    for owner, spec in _pod_specs():
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for c in spec["containers"]:
            assert c["securityContext"]["readOnlyRootFilesystem"] is True, owner
            assert c["securityContext"]["allowPrivilegeEscalation"] is False, owner
            tmp = [m for m in c.get("volumeMounts", []) if m["mountPath"] == "/tmp"]
            assert tmp and "emptyDir" in volumes[tmp[0]["name"]], f"{owner}: /tmp is not an emptyDir"


def test_file_settings_point_into_mounted_secrets() -> None:
    """Every Path setting in the ConfigMap names a key of a Secret mounted at its directory."""
    container = _listener_container()
    volumes = {v["name"]: v for v in _listener_pod()["spec"]["volumes"]}
    mounts = {m["mountPath"].rstrip("/"): volumes[m["name"]] for m in container["volumeMounts"]}
    secrets = _example_secrets()
    path_fields = [
        f
        for f, info in Settings.model_fields.items()
        if info.annotation is Path or Path in typing.get_args(info.annotation)
    ]
    checked = 0
    for field in path_fields:
        value = _configmap().get(_env_name(field))
        if value is None:
            continue
        path = Path(value)
        volume = mounts.get(str(path.parent))
        assert volume is not None and "secret" in volume, f"{field}: {path.parent} is not a mounted Secret"
        secret_name = volume["secret"]["secretName"]
        assert path.name in secrets[secret_name], f"{field}: no key {path.name} in Secret {secret_name}"
        checked += 1
    assert checked >= 4  # senders file, TLS cert, key and client CA


def test_example_senders_file_loads_and_is_not_open(tmp_path: Path) -> None:
    # An empty senders list means "open listener": the example must not be that.
    path = Path(_configmap()[_env_name("senders_file")])
    mounts = {m["mountPath"].rstrip("/"): m["name"] for m in _listener_container()["volumeMounts"]}
    volumes = {v["name"]: v for v in _listener_pod()["spec"]["volumes"]}
    secret = volumes[mounts[str(path.parent)]]["secret"]["secretName"]
    local = tmp_path / path.name
    local.write_text(_example_secrets()[secret][path.name])
    senders = load_senders(local)
    assert not senders.open
    assert senders.by_token("CHANGE-ME") is None


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


def test_pdb_keeps_one_listener() -> None:
    pdb = _one("PodDisruptionBudget")["spec"]
    pod_labels = _listener_pod()["metadata"]["labels"]
    assert pdb["minAvailable"] == 1
    assert pdb["selector"]["matchLabels"].items() <= pod_labels.items()


def test_kustomization_lists_every_manifest_but_the_example_secret() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    on_disk = {p.name for p in K8S.glob("*.yaml")} | {p.name for p in K8S.glob("*.yml")}
    assert set(kustomization["resources"]) == on_disk - {"kustomization.yaml", "secret.example.yaml"}
    assert "secret.example.yaml" in (DEPLOY / "README.md").read_text()
    namespace = _one("Namespace")["metadata"]["name"]
    assert kustomization["namespace"] == namespace
    for name, doc in _all_k8s_docs():
        if doc["kind"] not in {"Namespace", "Kustomization"}:
            assert doc["metadata"].get("namespace") == namespace, f"{name}: {doc['metadata']['name']}"


# --- compose wiring -------------------------------------------------------------------------


def test_compose_listener_waits_for_its_dependencies() -> None:
    services = _services()
    depends = services["adt-listener"]["depends_on"]
    assert depends["postgres"]["condition"] == "service_healthy"
    assert depends["kafka"]["condition"] == "service_healthy"
    assert depends["migrate"]["condition"] == "service_completed_successfully"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    for name, svc in services.items():
        for dep, cond in (svc.get("depends_on") or {}).items():
            if cond["condition"] == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep}, which has no healthcheck"
            if cond["condition"] == "service_completed_successfully":
                # A restart policy would run a one-shot forever and the waiter never starts.
                assert services[dep].get("restart", "no") == "no", dep


def test_compose_kafka_is_kraft_and_the_listener_reaches_it() -> None:
    services = _services()
    kafka = _compose_env(services["kafka"])
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert set(kafka["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    advertised = {a.split("://", 1)[1] for a in kafka["KAFKA_ADVERTISED_LISTENERS"].split(",")}
    bootstrap = _compose_env(services["adt-listener"])[_env_name("kafka_bootstrap_servers")]
    for server in bootstrap.split(","):
        assert server in advertised, f"{server} is not an advertised Kafka listener {advertised}"
        assert server.split(":")[0] in services


def test_compose_database_url_points_at_the_postgres_service() -> None:
    services = _services()
    pg = _compose_env(services["postgres"])
    for name in ("migrate", "adt-listener"):
        url = make_url(_interpolate(_compose_env(services[name])[_env_name("database_url")]))
        assert url.host == "postgres" and url.host in services, name
        assert url.username == pg["POSTGRES_USER"] and url.database == pg["POSTGRES_DB"], name
        assert url.password == _interpolate(pg["POSTGRES_PASSWORD"]), name


def test_compose_creates_the_topics_the_listener_uses() -> None:
    services = _services()
    env = _compose_env(services["adt-listener"])
    used = {env.get(_env_name(f), _default(f)) for f in ("topic_adt_events", "topic_adt_deadletter")}
    creators = [s for s in services.values() if "kafka-topics.sh" in " ".join(s.get("command") or [])]
    assert len(creators) == 1
    (creator,) = creators
    created = set(re.findall(r"--topic\s+(\S+)", " ".join(creator["command"])))
    assert created == used
    creator_name = next(n for n, s in services.items() if s is creator)
    condition = services["adt-listener"]["depends_on"][creator_name]["condition"]
    assert condition == "service_completed_successfully"


def test_compose_stop_grace_matches_k8s_termination_grace() -> None:
    grace = _listener_pod()["spec"]["terminationGracePeriodSeconds"]
    assert _services()["adt-listener"]["stop_grace_period"] == f"{grace}s"
