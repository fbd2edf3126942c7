"""`wpc migrate`: apply the database migrations to WPC_DATABASE_URL and exit."""

from __future__ import annotations

import argparse
import asyncio

from services.db import create_engine, migrate
from services.settings import Settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--database-url", help="overrides WPC_DATABASE_URL")


def run(args: argparse.Namespace) -> int:
    settings = Settings()
    url = args.database_url or settings.database_url
    if not url:
        print("wpc migrate: WPC_DATABASE_URL is not set")
        return 2

    async def _go() -> None:
        engine = create_engine(url, pool_size=1)
        try:
            await migrate(engine)
        finally:
            await engine.dispose()

    asyncio.run(_go())
    print("migrations applied")
    return 0
