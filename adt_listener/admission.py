"""Who gets an MLLP connection slot: a pure decision, taken when a connection is accepted.

A listener has `max_connections` slots. Idle connections are cheap to open and, left
alone, hold a slot until the idle timeout (minutes, since interface engines keep their
connections open between messages). So anyone who can reach the port could fill every
slot and lock the hospitals out. The rules below make sure a *known* sender (one whose
source address or client certificate the senders file names) always gets in:

| rule | newcomer | decision |
|---|---|---|
| 1 per-address limit | unknown, its address already holds `per_address` unknown connections | refuse `per_address` |
| 2 room | known: fewer than `max_connections` open | admit |
|   | unknown: fewer than `max_connections - reserved` unknown ones open, and a slot free | admit |
| 3 eviction | no room, an evictable connection exists | evict one, admit |
| 4 full | otherwise | refuse `max_connections` |

Evictable means idle: not in the middle of a frame, no frames read and not yet
answered (at the store or waiting for it), no ACK still being written. An unknown
newcomer may only take the place of an unknown connection (the reserved slots are
not its to take). Among the evictable, the victim is chosen in this order:

1. unknown connections that never completed a frame (`never_sent`): a real interface
   engine sends at once after connecting, a flood of idle sockets does not;
2. unknown connections that did send, then went idle (`idle_unknown`);
3. known senders' idle connections (`idle_known`), only for a known newcomer;

and within each, the one idle the longest. An evicted sender that wants to send again
reconnects; MLLP senders resend what was not acknowledged, and nothing unanswered is
ever dropped here.

`reserved` is the number of slots only known senders may use; the caller passes 0 when
no sender can be known (no addresses, no certificates), as those slots would then
serve no one.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar


class Slot(Protocol):
    """What the decision reads of an open connection."""

    @property
    def address(self) -> str: ...  # peer IP
    @property
    def known(self) -> bool: ...  # its sender is named by address or certificate
    @property
    def framed(self) -> bool: ...  # it has completed at least one frame
    @property
    def evictable(self) -> bool: ...  # idle: closing it loses nothing
    @property
    def last_active(self) -> float: ...  # loop time of its last frame byte or ACK (or its accept)


S = TypeVar("S", bound=Slot)


@dataclass(frozen=True)
class SlotPolicy:
    max_connections: int
    reserved: int = 0  # slots only known senders may use
    per_address: int = 0  # unknown connections per source address; 0: no limit

    def __post_init__(self) -> None:
        if self.max_connections < 1:
            raise ValueError("WPC_MLLP_MAX_CONNECTIONS must be at least 1")
        if not 0 <= self.reserved < self.max_connections:
            raise ValueError(
                f"WPC_MLLP_RESERVED_SLOTS ({self.reserved}) must be at least 0 and below "
                f"WPC_MLLP_MAX_CONNECTIONS ({self.max_connections})"
            )
        if self.per_address < 0:
            raise ValueError("WPC_MLLP_MAX_CONNECTIONS_PER_ADDRESS must be 0 (no limit) or more")


@dataclass(frozen=True)
class Admit:
    pass


@dataclass(frozen=True)
class Evict(Generic[S]):
    victim: S
    reason: str  # never_sent | idle_unknown | idle_known


@dataclass(frozen=True)
class Refuse:
    reason: str  # per_address | max_connections


def _victim_order(slot: Slot) -> tuple[bool, bool, float]:
    return (slot.known, slot.framed, slot.last_active)


def decide(address: str, known: bool, slots: Iterable[S], policy: SlotPolicy) -> Admit | Evict[S] | Refuse:
    """Admit, evict-then-admit, or refuse a connection from ``address`` (``known``: its
    sender is named by that address), given the connections already open."""
    open_slots = list(slots)
    unknown = [s for s in open_slots if not s.known]
    if (
        not known
        and policy.per_address
        and sum(1 for s in unknown if s.address == address) >= policy.per_address
    ):
        return Refuse("per_address")
    if len(open_slots) < policy.max_connections and (
        known or len(unknown) < policy.max_connections - policy.reserved
    ):
        return Admit()
    candidates = [s for s in (open_slots if known else unknown) if s.evictable]
    if not candidates:
        return Refuse("max_connections")
    victim = min(candidates, key=_victim_order)
    if victim.known:
        reason = "idle_known"
    elif victim.framed:
        reason = "idle_unknown"
    else:
        reason = "never_sent"
    return Evict(victim, reason)
