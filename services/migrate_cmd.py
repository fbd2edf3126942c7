"""`wpc migrate`: apply the database migrations to WPC_DATABASE_URL and exit."""

from __future__ import annotations

import argparse

from services import lifecycle
from services.db import migrate_url
from services.settings import Settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--database-url", help="overrides WPC_DATABASE_URL")


def run(args: argparse.Namespace) -> int:
    settings = Settings()
    url = args.database_url or settings.database_url
    if not url:
        print("wpc migrate: WPC_DATABASE_URL is not set")
        return 2

    lifecycle.run(migrate_url(url))
    print("migrations applied")
    return 0
