"""`wpc migrate`: apply the database migrations to WPC_DATABASE_URL and exit.

``--wait`` applies nothing: it waits until the database's schema is the one this code
expects (Alembic head), and exits 0, or 1 after ``--timeout`` seconds. The Kubernetes
Deployments run it as an init container, so that a pod of a new version starts only
after the `wpc-migrate` Job has brought the schema up to date.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from services import lifecycle
from services.db import migrate_url, schema_revisions
from services.runinfo import tool_database_url
from services.settings import ServiceSettings, load_settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--database-url", help="overrides WPC_DATABASE_URL")
    parser.add_argument("--wait", action="store_true",
                        help="apply nothing; wait until the schema is at this version's head")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds --wait waits (600)")


async def wait_for_head(url: str, timeout_s: float, interval_s: float = 2.0) -> tuple[bool, str]:
    """(schema at head, what was last seen), polling until ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            current, head = await schema_revisions(url)
            seen = f"schema at {current or 'no revision'}, this version needs {head}"
            if current == head:
                return True, seen
        except Exception as exc:  # not reachable yet: keep waiting
            seen = f"database not reachable ({type(exc).__name__})"
        if time.monotonic() + interval_s > deadline:
            return False, seen
        await asyncio.sleep(interval_s)


def run(args: argparse.Namespace) -> int:
    settings = load_settings(ServiceSettings)
    # --database-url, else WPC_DATABASE_URL, else the running `wpc up`'s; none: ConfigError (exit 2)
    url = tool_database_url(settings.database_url, settings.data_dir, explicit=args.database_url)
    if args.wait:
        ready, seen = lifecycle.run(wait_for_head(url, args.timeout))
        print(f"wpc migrate --wait: {seen}")
        return 0 if ready else 1
    lifecycle.run(migrate_url(url))
    print("migrations applied")
    return 0
