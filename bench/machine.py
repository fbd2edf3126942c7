"""How busy the whole machine was during a measurement, and how much of it the host took.

On a virtual machine the hypervisor can run other guests on the CPUs this one was given:
that time is *steal* (``/proc/stat``'s eighth field). A benchmark that waits on CPU then
runs slower for reasons outside the code, so every benchmark reports the steal share beside
its figures: a run with a large share was not on a quiet machine, whatever the rest of this
machine was doing.

Shares are of all the machine's CPU time over the interval (every CPU), from Linux
``/proc/stat``; elsewhere every share is None.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

_STAT = Path("/proc/stat")


@dataclasses.dataclass(frozen=True)
class Ticks:
    """The machine's CPU time so far, in clock ticks, summed over its CPUs."""

    busy: int = 0  # user, nice, system, irq, softirq: this machine's own work
    idle: int = 0  # idle and iowait
    steal: int = 0  # the hypervisor ran something else on our CPUs

    @property
    def total(self) -> int:
        return self.busy + self.idle + self.steal


def parse(line: str) -> Ticks:
    """The ``cpu`` line of ``/proc/stat``: user nice system idle iowait irq softirq steal ...

    Guest time (fields nine and ten) is already inside user and nice, so it is not added again.
    """
    fields = [int(v) for v in line.split()[1:]]
    fields += [0] * (8 - len(fields))
    user, nice, system, idle, iowait, irq, softirq, steal = fields[:8]
    return Ticks(busy=user + nice + system + irq + softirq, idle=idle + iowait, steal=steal)


def ticks() -> Ticks | None:
    """Now, or None where there is no ``/proc/stat``."""
    try:
        with _STAT.open(encoding="ascii") as stat:
            return parse(stat.readline())
    except OSError:
        return None


@dataclasses.dataclass(frozen=True)
class Shares:
    """What share of the machine's CPU time went where between two samples (0 to 1)."""

    busy: float | None
    steal: float | None

    def as_json(self) -> dict[str, float | None]:
        return {"machine_cpu_busy": self.busy, "host_steal": self.steal}

    def describe(self) -> str:
        """One phrase for a report, with a warning when the host took a noticeable share."""
        if self.busy is None or self.steal is None:
            return "machine CPU shares unknown (no /proc/stat)"
        text = f"machine CPU busy {self.busy:.0%}, taken by the host (steal) {self.steal:.0%}"
        if self.steal >= NOT_QUIET:
            text += " — not a quiet machine: the figures are slower than this code on a quiet one"
        return text


# A steal share from which a run is reported as not quiet: a few per cent is the usual
# background of a shared host; a tenth of the CPU is enough to move latency tails.
NOT_QUIET = 0.05


def shares(before: Ticks | None, after: Ticks | None) -> Shares:
    if before is None or after is None or after.total <= before.total:
        return Shares(None, None)
    total = after.total - before.total
    busy, steal = after.busy - before.busy, after.steal - before.steal
    return Shares(busy=round(busy / total, 3), steal=round(steal / total, 3))
