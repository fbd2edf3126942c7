"""How busy the whole machine was during a measurement, and how much of it the host took.

On a virtual machine the hypervisor can run other guests on the CPUs this one was given:
that time is *steal* (``/proc/stat``'s eighth field). A benchmark that waits on CPU then
runs slower for reasons outside the code, so every benchmark reports the steal share beside
its figures: a run with a large share was not on a quiet machine, whatever the rest of this
machine was doing.

Shares are of all the machine's CPU time over the interval (every CPU), from Linux
``/proc/stat``; elsewhere every share is None.

Steal is not the only way a host slows a guest down: the same VM size can land on a slower
or busier host with no steal at all (on 2026-12-02 two sessions' machines ran the same
micro-benchmarks 1.3–1.8× apart at 0 % steal). `reference_ms` times a fixed workload of the
standard library alone, so that a run's figures can be set beside the host's speed at the time.
"""

from __future__ import annotations

import dataclasses
import json
import re
import statistics
import time
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


# --- the host's speed ----------------------------------------------------------------------

_WORDS = re.compile(r"[A-Z]{2,}\d*")


def _reference_round() -> int:
    """A fixed single-threaded workload like the services' own (JSON, text, dicts, sorting),
    of the standard library only, so that a change to the project's code never moves it."""
    doc = {f"k{i}": {"name": f"PATIENT^{i}^M", "codes": [i, i * 7 % 13, str(i)], "ok": i % 3 == 0}
           for i in range(2000)}
    text = json.dumps(doc)
    back = json.loads(text)
    words = _WORDS.findall(text)
    ranked = sorted(back, key=lambda k: (back[k]["codes"][1], k))
    return len(words) + len(ranked) + sum(len(v["name"]) for v in back.values())


def reference_ms(rounds: int = 7) -> float:
    """Milliseconds the fixed workload takes on one CPU now, the median of ``rounds``
    (lower is faster; the median, not the best, because the host's speed is what varies).

    Runs of a benchmark compare only at alike figures: twice the figure is a host about half
    as fast, whatever the code did. On the 2-CPU VM of 2026-12-02 it read ~9 ms at times and
    ~17 ms most of the time, from one second to the next, at 0 % steal."""
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        _reference_round()
        times.append(time.perf_counter() - started)
    return round(statistics.median(times) * 1000, 2)


def describe_reference(before_after: list[float]) -> str:
    """One line for a report: the host's speed at the start and at the end of the run."""
    before, after = before_after
    return (f"host speed: reference workload {before:g} ms before the run, {after:g} ms after "
            "(bench.machine.reference_ms; lower is faster, compare runs only at alike figures)")
