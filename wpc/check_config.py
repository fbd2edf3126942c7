"""`wpc check-config`: check the settings and every configured file, and start nothing.

What it reads: the ``WPC_`` settings (types, ports, log level), the rules file (the
example when WPC_RULES_FILE is unset), the users file, the notification configuration
and the secrets its endpoints name, the senders file, the TLS certificate, key and
client CA. It opens no port and connects to nothing: run it before a deploy, or in CI.

Output: one summary line per part and "configuration OK", exit status 0; otherwise every
problem on its own line on stderr ("<file> line <n>: <key>: <what is wrong>"), exit 2.
A variable that looks like a misspelt setting (WPC_MLLP_PROT) gets a warning: settings
ignore unknown names, so a typo would otherwise go unnoticed.
"""

from __future__ import annotations

import argparse
import difflib
import os
import sys

from services.configfile import ConfigError
from services.settings import PREFIX
from wpc.preflight import ALL_FILES, check_files
from wpc.settings import SystemSettings, load_system, setting_names

_SIMILAR = 0.85  # difflib ratio above which an unknown WPC_ name is taken for a typo


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--notifier", action="store_true", help="also require WPC_NOTIFY_FILE (as `wpc notifier` does)"
    )


def misspelt_settings(environ: dict[str, str]) -> list[str]:
    """Warnings for WPC_ variables that are no setting but close to one."""
    known = setting_names()
    out = []
    for name in sorted(environ):
        upper = name.upper()
        if not upper.startswith(PREFIX) or upper in known:
            continue
        close = difflib.get_close_matches(upper, known, n=1, cutoff=_SIMILAR)
        if close:
            out.append(f"warning: {name} is not a setting (ignored); did you mean {close[0]}?")
    return out


def run(args: argparse.Namespace) -> int:
    for warning in misspelt_settings(dict(os.environ)):
        print(warning, file=sys.stderr)
    try:
        system = load_system()
        infrastructure = _infrastructure(system)
        summary = check_files(system.services, ALL_FILES, notify_required=args.notifier)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"wpc check-config: {problem}", file=sys.stderr)
        return exc.exit_status
    print(f"settings   {infrastructure}")
    for line in summary:
        print(line)
    print("configuration OK")
    return 0


def _infrastructure(system: SystemSettings) -> str:
    settings = system.shared
    from sqlalchemy.engine import make_url

    database = "embedded PostgreSQL (WPC_DATABASE_URL not set)"
    if settings.database_url:
        try:
            database = make_url(settings.database_url).render_as_string(hide_password=True)
        except Exception:  # sqlalchemy raises ArgumentError or ValueError for a malformed URL
            raise ConfigError("WPC_DATABASE_URL is not a database URL; e.g. "
                              "postgresql://wpc:PASSWORD@db.example.org:5432/wpc") from None
    broker = settings.kafka_bootstrap_servers or "embedded Tansu broker"
    return (f"database {database}; Kafka {broker}; MLLP :{system.listener.mllp_port}, "
            f"HTTP :{system.listener.listener_http_port}, :{system.enrollment.enrollment_http_port}, "
            f":{system.notifier.notifier_http_port}; log level {settings.log_level}")
