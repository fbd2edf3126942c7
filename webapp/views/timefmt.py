"""Times as the pages show them: in the site's time zone."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo


def parse_time(value: str | dt.datetime | None) -> dt.datetime | None:
    """An API's ISO 8601 time (with offset) as an aware datetime; None stays None."""
    if value is None or isinstance(value, dt.datetime):
        return value
    parsed = dt.datetime.fromisoformat(value)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def local_time(value: str | dt.datetime | None, zone: str, fmt: str = "%a %d %b %H:%M") -> str:
    """``value`` in the site's zone ``zone`` as ``fmt``; an empty string for none."""
    parsed = parse_time(value)
    return parsed.astimezone(ZoneInfo(zone)).strftime(fmt) if parsed is not None else ""
