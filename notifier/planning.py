"""From a recipient's due notices to the messages it gets: rate limit and digests (pure).

Alert fatigue is the reason care teams turn encounter notifications off; two rules fight it:

- ``max_per_hour``: at most that many messages to the recipient in any hour. When more are
  due, the allowance minus one goes out one by one and the rest go together as one digest
  message, so nothing waits longer than needed and the limit holds. With no allowance
  left, everything waits until the oldest message of the hour leaves the window.
- ``digest_at``: non-urgent notices were scheduled for the daily digest time at creation
  (`policy.deliver_after`); when that time comes they are all due at once and go as one
  digest. Urgent notices (new candidates) never wait for a digest.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

HOUR = dt.timedelta(hours=1)


@dataclass(frozen=True)
class DueNotice:
    notice_id: uuid.UUID
    urgent: bool
    deliver_after: dt.datetime


@dataclass(frozen=True)
class Plan:
    batches: tuple[tuple[uuid.UUID, ...], ...]  # each batch is one message per endpoint
    postpone_until: dt.datetime | None = None  # for the notices not in any batch


def plan(
    due: Sequence[DueNotice],
    *,
    max_per_hour: int | None,
    digest: bool,
    sent_in_last_hour: Sequence[dt.datetime],
    now: dt.datetime,
) -> Plan:
    if not due:
        return Plan(())
    ordered = sorted(due, key=lambda n: (not n.urgent, n.deliver_after, n.notice_id))
    urgent = [n.notice_id for n in ordered if n.urgent]
    routine = [n.notice_id for n in ordered if not n.urgent]
    batches: list[tuple[uuid.UUID, ...]] = [(n,) for n in urgent]
    if digest and len(routine) > 1:
        batches.append(tuple(routine))
    else:
        batches.extend((n,) for n in routine)
    if max_per_hour is None:
        return Plan(tuple(batches))
    recent = sorted(t for t in sent_in_last_hour if t > now - HOUR)
    allowance = max_per_hour - len(recent)
    if allowance <= 0:
        return Plan((), postpone_until=recent[len(recent) - max_per_hour] + HOUR if recent else now + HOUR)
    if len(batches) <= allowance:
        return Plan(tuple(batches))
    singles = batches[: allowance - 1]
    rest = tuple(n for batch in batches[allowance - 1:] for n in batch)
    return Plan((*singles, rest))
