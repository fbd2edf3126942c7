"""Program slots (programs.md, capacities): who is proposed now, who waits, who goes next. Pure.

A program has ``capacity`` slots. A candidate holds one while pending, accepted or
enrolled (`status.HOLDS_SLOT`); a queued candidate waits for one, in creation order.

    what happens                                   what is decided
    a candidate is made                            a slot is free: proposed (pending); else queued
    a status change from a slot-holding status     its slot is free again: the program is refilled
      to one that holds none (decline, expire,
      disenroll, withdraw)
    the system withdraws a superseded candidate    its slot goes to the replacement first (made
                                                   before the refill), then the program is refilled
    a program is refilled                          a slot is free and someone waits: the oldest
                                                   queued candidate is proposed

The repository (`enrollment_svc.candidates`) loads what these functions read and writes
what they decide. It counts a program's slots under the lock of its ``program_capacity``
row, held to commit, so two transactions can never both take the last slot; which of the
queued is oldest is its read too (in creation order, skipping those another transaction
holds), as that read is one row, not the whole queue.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Literal, TypeVar

from enrollment_svc.status import HOLDS_SLOT

__all__ = ["Occupancy", "next_in_line", "placement", "releases_slot"]

T = TypeVar("T")


@dataclasses.dataclass(frozen=True, slots=True)
class Occupancy:
    """A program's slots as counted under its capacity lock."""

    capacity: int  # 0 when the program has no capacity row: nobody is proposed
    used: int  # candidates holding a slot

    @property
    def free(self) -> bool:
        return self.used < self.capacity


def placement(occupancy: Occupancy) -> Literal["pending", "queued"]:
    """Where a new candidate goes: proposed when a slot is free, else to the end of the queue."""
    return "pending" if occupancy.free else "queued"


def releases_slot(from_status: str, to_status: str) -> bool:
    """Whether a status change frees the slot the candidate held."""
    return from_status in HOLDS_SLOT and to_status not in HOLDS_SLOT


def next_in_line(occupancy: Occupancy, queued: Sequence[T]) -> T | None:
    """Who is proposed when the program is refilled: the oldest of ``queued`` (oldest first),
    when a slot is free; else nobody."""
    return queued[0] if occupancy.free and queued else None
