"""Checks made before anything starts, so a mistake is one line and not a traceback
after the listener is already taking messages.

`checked_settings(command, model)` is what a server command (`wpc listener`, `wpc
enrollment`, `wpc notifier`) calls first, `checked_system` what `wpc up` calls. In this order:

1. the settings, the service's own or every service's (`services.settings.load_settings`,
   `wpc.settings.load_system`: a wrong value names its variable);
2. every configuration file the command uses is read and validated (`check_files`:
   rules, users, notification configuration and its secrets, senders, TLS files);
3. `wpc up` only: no other `wpc up` runs with the same data directory (its run.json);
4. every port the command will listen on is free (a bind test), naming the setting and
   the option that moves it, and the program holding it when this machine tells us;
5. the configured database answers (one connection, a short timeout).

Exception tree::

    ConfigError (services.configfile)   the person's configuration is wrong: exit status 2
    StartupError                        this machine is not ready (a port taken, the database
                                        away, another `wpc up` running): exit status 1

`wpc check-config` runs steps 1 and 2 alone. This module sits with the commands, above
the services: it imports their loaders (inside the functions, so `wpc send` stays light).
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import ssl
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adt_listener.settings import ListenerSettings
from enrollment_svc.settings import EnrollmentSettings
from notifier.settings import NotifierSettings
from services.configfile import ConfigError
from services.runinfo import read_run_info
from services.settings import DownstreamSettings, S, ServiceSettings, load_settings
from webapp.settings import WebSettings
from wpc.settings import SystemSettings, load_system

__all__ = ["StartupError", "check_database", "check_files", "check_ports", "checked_settings", "checked_system"]

DB_TIMEOUT_S = 3.0
NOTIFY_EXAMPLE = "deploy/notify/wpc-notify.yaml"

# `wpc up`'s options that override a setting (wpc.up.add_arguments), for messages.
UP_FLAGS: Mapping[str, str] = {
    "data_dir": "--data-dir",
    "mllp_port": "--mllp-port",
    "listener_http_port": "--http-port",
    "enrollment_http_port": "--enrollment-port",
    "notifier_http_port": "--notifier-port",
    "demo_inbox_port": "--inbox-port",
    "web_port": "--web-port",
}


class StartupError(RuntimeError):
    """This machine is not ready for the command (not a configuration mistake): exit status 1."""

    exit_status = 1


@dataclass(frozen=True)
class Needs:
    ports: tuple[str, ...]  # port settings the command listens on
    files: tuple[str, ...]  # configuration files it reads: rules, users, notify, senders, tls
    notify_required: bool = False


NEEDS: Mapping[str, Needs] = {
    "up": Needs(("mllp_port", "listener_http_port", "enrollment_http_port", "notifier_http_port", "demo_inbox_port",
                 "web_port"), ("senders", "tls", "rules", "users", "notify")),
    "listener": Needs(("mllp_port", "listener_http_port"), ("senders", "tls")),
    "enrollment": Needs(("enrollment_http_port",), ("rules", "users")),
    "notifier": Needs(("notifier_http_port",), ("notify", "users"), notify_required=True),
    # The web app reaches no database and no broker: only the APIs (webapp/settings.py).
    "web": Needs(("web_port",), ("users",)),
}
ALL_FILES = ("rules", "users", "notify", "senders", "tls")


def checked_settings(command: str, model: type[S]) -> S:
    """The settings of a one-service ``command`` (``model``, its service's class), after every
    check above; raises `ConfigError` / `StartupError`."""
    settings = load_settings(model)
    if command != "web" and (not settings.database_url or not settings.kafka_bootstrap_servers):
        raise ConfigError(f"wpc {command}: set WPC_DATABASE_URL and WPC_KAFKA_BOOTSTRAP_SERVERS (or use `wpc up`)")
    _check(command, (settings,), {})
    return settings


def checked_system(overrides: Mapping[str, object] | None = None) -> SystemSettings:
    """Every service's settings for `wpc up` (``overrides``: its options), after every check above."""
    system = load_system(overrides, flags=UP_FLAGS)
    _check("up", system.services, UP_FLAGS)
    return system


def _check(command: str, parts: Sequence[ServiceSettings], flags: Mapping[str, str]) -> None:
    needs = NEEDS[command]
    shared = parts[0]
    check_files(parts, needs.files, notify_required=needs.notify_required)
    if command == "up":
        if not shared.database_url:
            _check_writable_dir(shared.data_dir)
        running = read_run_info(shared.data_dir)
        if running is not None and running.pid != os.getpid():
            raise StartupError(
                f"wpc up is already running (pid {running.pid}, {running.path}): stop it first, "
                "or start this one with another WPC_DATA_DIR and other ports"
            )
    notifier = next((p for p in parts if isinstance(p, NotifierSettings)), None)
    ports = [p for p in needs.ports if not (p == "demo_inbox_port" and notifier is not None
                                            and notifier.notify_file is not None)]
    check_ports(parts, ports, flags=flags)
    if shared.database_url:
        check_database(shared.database_url)


# --- files ------------------------------------------------------------------------------------


def check_files(
    parts: Sequence[ServiceSettings], which: tuple[str, ...] = ALL_FILES, *, notify_required: bool = False
) -> list[str]:
    """Read and validate each configuration file in ``which``, as named by the settings in
    ``parts`` (of the service that reads it); one summary line per file. Raises `ConfigError`
    holding every problem found (each one line)."""
    problems: list[str] = []
    summary: list[str] = []
    for name in which:
        models, check = _CHECKS[name]
        try:
            summary.append(check(next(p for p in parts if isinstance(p, models)), notify_required))
        except ConfigError as exc:
            problems.extend(exc.problems)
    if problems:
        raise ConfigError(problems)
    return summary


def _part(parts: Sequence[ServiceSettings], model: type[S]) -> S:
    return next(p for p in parts if isinstance(p, model))


def _rules(settings: EnrollmentSettings, _: bool) -> str:
    from enrollment_svc.rules import load_rules
    from enrollment_svc.service import EXAMPLE_RULES

    path = settings.rules_file or EXAMPLE_RULES
    rules = load_rules(path, setting="WPC_RULES_FILE" if settings.rules_file else None)
    return f"rules      {path}: version {rules.rule_version}{'' if settings.rules_file else ' (the example)'}"


def _users(settings: DownstreamSettings | WebSettings, _: bool) -> str:
    from services.auth import load_users

    if settings.users_file is None:
        return "users      WPC_USERS_FILE not set: `wpc up` makes a demo token; other commands let no one in"
    load_users(settings.users_file, setting="WPC_USERS_FILE")
    return f"users      {settings.users_file}: valid"


def _notify(settings: NotifierSettings, required: bool) -> str:
    from notifier.config import endpoints_of, load_config

    if settings.notify_file is None:
        if required:
            raise ConfigError(f"WPC_NOTIFY_FILE is not set: the notifier needs its configuration "
                              f"(example: {NOTIFY_EXAMPLE})")
        return "notify     WPC_NOTIFY_FILE not set: `wpc up` delivers to its demo inbox"
    cfg = load_config(settings.notify_file, setting="WPC_NOTIFY_FILE")
    problems = []
    for recipient in (*cfg.care_teams, *cfg.practices):
        try:
            endpoints_of(recipient, os.environ)
        except ValueError as exc:
            problems.append(f"{settings.notify_file}: {exc}: set it in the environment")
    if problems:
        raise ConfigError(problems)
    return f"notify     {settings.notify_file}: version {cfg.version}+{cfg.digest}"


def _senders(settings: ListenerSettings, _: bool) -> str:
    from adt_listener.senders import load_senders
    from services.configfile import read_yaml

    if settings.senders_file is None:
        return "senders    WPC_SENDERS_FILE not set: the listener takes any sender (demo)"
    read_yaml(settings.senders_file, setting="WPC_SENDERS_FILE")  # missing file, YAML syntax: with the line
    try:
        senders = load_senders(settings.senders_file)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return f"senders    {settings.senders_file}: {len(senders.senders)} sender(s)"


def _tls(settings: ListenerSettings, _: bool) -> str:
    files = {"WPC_TLS_CERT_FILE": settings.tls_cert_file, "WPC_TLS_KEY_FILE": settings.tls_key_file,
             "WPC_TLS_CLIENT_CA_FILE": settings.tls_client_ca_file}
    problems = [p for name, path in files.items() if path is not None and (p := _unreadable(name, path))]
    if problems:
        raise ConfigError(problems)
    cert, key, ca = settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file
    if cert is None:
        if key is not None or ca is not None:
            raise ConfigError("WPC_TLS_KEY_FILE / WPC_TLS_CLIENT_CA_FILE are set but WPC_TLS_CERT_FILE is not: "
                              "set the server certificate too, or unset them for plain TCP")
        return "TLS        off (WPC_TLS_CERT_FILE not set): MLLP on plain TCP"
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(str(cert), str(key or cert))
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"WPC_TLS_CERT_FILE={cert}, WPC_TLS_KEY_FILE={key or cert}: cannot use them "
                          f"({_ssl_reason(exc)}); both must be PEM and the key must match the certificate") from None
    if ca is not None:
        try:
            context.load_verify_locations(cafile=str(ca))
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(f"WPC_TLS_CLIENT_CA_FILE={ca}: not a PEM CA certificate ({_ssl_reason(exc)})") from None
    return f"TLS        {cert}{' with client certificates from ' + str(ca) if ca else ''}"


# Each file, with the settings class of the service that reads it (the first of ``parts`` that is one).
_CHECKS: Mapping[str, tuple[tuple[type[ServiceSettings], ...], Callable[[Any, bool], str]]] = {
    "rules": ((EnrollmentSettings,), _rules),
    "users": ((DownstreamSettings, WebSettings), _users),
    "notify": ((NotifierSettings,), _notify),
    "senders": ((ListenerSettings,), _senders),
    "tls": ((ListenerSettings,), _tls),
}


def _unreadable(name: str, path: Path) -> str | None:
    try:
        with path.open("rb"):
            return None
    except FileNotFoundError:
        return f"{name}={path}: no such file"
    except IsADirectoryError:
        return f"{name}={path}: is a directory, not a file"
    except PermissionError:
        return f"{name}={path}: not readable by this user (check its permissions)"
    except OSError as exc:
        return f"{name}={path}: cannot read it ({exc.strerror or exc})"


def _ssl_reason(exc: Exception) -> str:
    if isinstance(exc, ssl.SSLError):
        return str(exc.reason or exc.strerror or exc).lower().replace("_", " ")
    return str(getattr(exc, "strerror", None) or exc)


def _check_writable_dir(data_dir: Path) -> None:
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        probe = data_dir / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"WPC_DATA_DIR={data_dir}: cannot write there ({exc.strerror or exc}); "
                          "choose a directory this user may write (or --data-dir)") from None


# --- ports ------------------------------------------------------------------------------------


def check_ports(parts: Sequence[ServiceSettings], port_settings: list[str], *, flags: Mapping[str, str]) -> None:
    """A bind test on each port (a field of one of ``parts``): raises `StartupError` at the first one taken."""
    for name in port_settings:
        settings = next(p for p in parts if name in type(p).model_fields)
        port = int(getattr(settings, name))
        if port == 0:  # a free port is picked at start
            continue
        host = settings.mllp_host if isinstance(settings, ListenerSettings) and name == "mllp_port" \
            else "127.0.0.1" if name == "demo_inbox_port" else settings.http_host
        error = _bind_error(host, port)
        if error is None:
            continue
        variable = f"WPC_{name.upper()}"
        move = f"`wpc up {flags[name]} {port + 1}`" if name in flags else f"{variable}={port + 1}"
        if error == errno.EADDRINUSE:
            owner = listening_process(port)
            if owner is not None and _is_wpc_up(owner[1]):
                raise StartupError(f"wpc up is already running (pid {owner[0]}): it holds port {port} ({variable}); "
                                   f"stop it first, or start this one on other ports, e.g. {move}")
            by = f" by pid {owner[0]} ({_short(owner[1])})" if owner is not None else ""
            raise StartupError(f"port {port} ({variable}) is in use{by}: stop that program, or choose another "
                               f"port, e.g. {move}")
        if error == errno.EACCES:
            raise StartupError(f"port {port} ({variable}): this user may not listen on it (ports below 1024 need "
                               f"privileges); choose another, e.g. {move}")
        if error == errno.EADDRNOTAVAIL or error == -1:
            which = "WPC_MLLP_HOST" if name == "mllp_port" else "WPC_HTTP_HOST"
            raise StartupError(f"{which}={host}: not an address of this machine; use 0.0.0.0 or one of its addresses")
        raise StartupError(f"port {port} ({variable}) cannot be opened ({os.strerror(error)}); choose another, "
                           f"e.g. {move}")


def _bind_error(host: str, port: int) -> int | None:
    """None when ``host:port`` can be listened on now; else the errno (-1: unknown host)."""
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror:
        return -1
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as s:
        # As asyncio and uvicorn do on Unix: a port in TIME_WAIT is free to listen on.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(address)
            s.listen(1)
        except OSError as exc:
            return exc.errno or errno.EADDRINUSE
    return None


def listening_process(port: int) -> tuple[int, list[str]] | None:
    """(pid, command line) of a process of this user listening on TCP ``port``, when Linux's
    /proc tells (elsewhere, or for another user's process: None)."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            # local_address is HEX_IP:HEX_PORT; state 0A is LISTEN; field 9 is the socket inode.
            if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    if not inodes:
        return None
    wanted = {f"socket:[{inode}]" for inode in inodes}
    for pid_dir in Path("/proc").iterdir():
        if not pid_dir.name.isdigit():
            continue
        try:
            for fd in (pid_dir / "fd").iterdir():
                if os.readlink(fd) in wanted:
                    cmdline = (pid_dir / "cmdline").read_bytes().split(b"\0")
                    return int(pid_dir.name), [a.decode(errors="replace") for a in cmdline if a]
        except OSError:  # another user's process, or one that just ended
            continue
    return None


def _short(argv: list[str]) -> str:
    text = " ".join([os.path.basename(argv[0]), *argv[1:]]) if argv else "?"
    return text if len(text) <= 80 else text[:77] + "..."


def _is_wpc_up(argv: list[str]) -> bool:
    """A `wpc up` process: the console script, or `python -m wpc.cli up`."""
    for i, arg in enumerate(argv):
        if (os.path.basename(arg) == "wpc" or arg == "wpc.cli") and "up" in argv[i + 1:]:
            return True
    return False


# --- database ---------------------------------------------------------------------------------


def check_database(url: str, timeout_s: float = DB_TIMEOUT_S) -> None:
    """One connection to ``url``; `StartupError` naming WPC_DATABASE_URL (without its password)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    from services.db import normalize_url

    try:
        shown = make_url(normalize_url(url)).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        raise ConfigError("WPC_DATABASE_URL is not a database URL; e.g. "
                          "postgresql://wpc:PASSWORD@db.example.org:5432/wpc") from None
    try:
        asyncio.run(_connect(url, timeout_s))
    except Exception as exc:  # any failure to connect is the answer; its kind is said below
        raise StartupError(f"database not reachable at {shown} (WPC_DATABASE_URL): {_db_reason(exc, timeout_s)}; "
                           "start PostgreSQL or correct WPC_DATABASE_URL") from None


async def _connect(url: str, timeout_s: float) -> None:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine
    from sqlalchemy.pool import NullPool

    from services.db import normalize_url

    engine = create_async_engine(normalize_url(url), poolclass=NullPool, connect_args={"timeout": timeout_s})
    try:
        async with asyncio.timeout(timeout_s + 1.0), engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
    finally:
        await engine.dispose()


def _db_reason(exc: BaseException, timeout_s: float) -> str:
    inner: BaseException = getattr(exc, "orig", None) or exc
    if isinstance(inner, TimeoutError):
        return f"no answer within {timeout_s:g} s"
    if isinstance(inner, OSError) and inner.errno:
        return os.strerror(inner.errno).lower()
    text = str(inner).strip().splitlines()
    # asyncpg's messages name the user or the database, never data.
    return (text[0] if text else type(inner).__name__)[:160]
