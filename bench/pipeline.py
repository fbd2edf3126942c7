"""`wpc bench pipeline`: the whole system in real time, measured from outside.

The system runs as it is deployed: `wpc listener --migrate`, `wpc enrollment` and
`wpc notifier`, each a process of its own, against PostgreSQL and the broker (the
configured ones, or an embedded PostgreSQL and Tansu started here, as `wpc up` does).
The care teams are a local webhook receiver in this process, which checks every
signature.

For each rate R of ``--rates`` (ADT messages/s), for ``--duration`` seconds:

* background: other patients' admits, updates and discharges (`bench.synthetic`'s county
  feed) sent open loop over ``--connections`` MLLP connections by a load-generator
  process (`bench.ingest`'s, scheduled by the clock; each patient's messages in order on
  one connection, none sent twice). ``--background current`` (the
  default) dates the feed up to the phase's start, as a live county's traffic is: every
  event is current, takes the enrollment service's per-event path and may propose
  someone. ``--background history`` sends it as last year's, which the service applies
  as history (its bulk path, `enrollment_svc.bulk`) and which proposes nobody;
* probes: every ``--probe-interval`` seconds, a patient whose history (two inpatient
  stays in the last six months, loaded before the phases) makes today's admission a
  TOC candidate. Its latency runs from writing the admission to the listener's socket
  to the TOC team's webhook receiving the candidate notice.

After the phase, the bench waits for the pipeline to catch up (every accepted message
applied by the enrollment service, every probe delivered): *drain* is how long that took
after the last send. A rate is *sustained* when the load generator achieved it, nothing
was refused or lost, every probe arrived, and the drain took at most ``DRAIN_BOUND_S``.

CPU: user + system time of every process of the system from ``/proc`` (the three
services, the listener's worker processes, PostgreSQL, the broker), from the start of a
phase to the end of its drain, divided by the ADT messages the phase sent (background and
probes). With an external PostgreSQL only the backends connected to the bench's database
are counted (not its WAL writer or checkpointer), with an external broker none. Beside
them, each phase's share of the machine's CPU that was busy and that the host took
(steal, `bench.machine`): a phase with a large steal share did not run on a quiet machine.

Output: a table for people, then one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import math
import os
import secrets
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, HTTPException, Request

from bench import machine

if TYPE_CHECKING:
    from services.settings import ServiceSettings

DRAIN_BOUND_S = 3.0  # "lag stays bounded": the backlog at the end of a phase clears within this
PROBE_TIMEOUT_S = 60.0  # a probe not delivered by then counts as lost
GOAL_P99_S = {500.0: 1.0, 1000.0: 2.0}  # issue 14: e2e p99 at these background rates
GOAL_IDLE_P50_S = 0.150
GOAL_CPU_MS = 2.0  # per ADT event, all processes together
_SECRET_ENV = "WPC_BENCH_HOOK_SECRET"
_PT = dt.timezone(dt.timedelta(hours=-8))
_FACILITY = "COUNTYGEN"  # a participating general acute hospital of the example rules
_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True)
class PipelineOptions:
    rates: tuple[float, ...] = (0.0, 200.0, 500.0, 1000.0)
    duration: float = 20.0
    connections: int = 8
    probe_interval: float = 0.5
    background: str = "current"  # current | history (BACKGROUNDS)


BACKGROUNDS = ("current", "history")


# --- the probes: patients whose admission today makes a TOC candidate ---------------------


def _ts(value: dt.datetime) -> str:
    return value.strftime("%Y%m%d%H%M%S%z")


def probe_message(
    trigger: str, *, run: int, patient: int, stay: int, at: dt.datetime, admit: dt.datetime,
    discharge: dt.datetime | None = None, dx: str = "",
) -> bytes:
    """One ADT message of probe patient ``patient`` of run ``run`` (made-up values only).

    Visit numbers are ``PB<run>P<patient>V<stay>``, control ids the same with the trigger."""
    visit = f"PB{run}P{patient}V{stay}"
    structure = "ADT_A03" if trigger == "A03" else "ADT_A01"
    pv1 = ["PV1", "1", "I", f"4W^101^A^{_FACILITY}", *[""] * 6, "MED", *[""] * 8, visit, "MC",
           *[""] * 23, _ts(admit), _ts(discharge) if discharge else ""]
    segments = [
        f"MSH|^~\\&|ADT|{_FACILITY}|WPC|WPC|{_ts(at)}||ADT^{trigger}^{structure}|{visit}{trigger}|P|2.5.1",
        f"EVN|{trigger}|{_ts(at)}",
        f"PID|1||PB{run}M{patient}^^^{_FACILITY}^MR||PROBE^PAT||19800101|U|||"
        "1 MAIN ST^^LOS ANGELES^CA^90012^USA^H^^06037",
        "|".join(pv1),
    ]
    if dx:
        segments.append(f"DG1|1||{dx}^^I10||{_ts(at)}|A")
    segments.append("IN1|1|MCLAC|CADHCS|L.A. Care Health Plan Medi-Cal")
    return ("\r".join(segments) + "\r").encode()


def probe_history(run: int, patient: int, now: dt.datetime) -> list[bytes]:
    """Two past inpatient stays (120 and 45 days ago): the third admission qualifies for TOC."""
    out = []
    for stay, days in ((1, 120), (2, 45)):
        admit = now - dt.timedelta(days=days)
        leave = admit + dt.timedelta(days=2)
        out.append(probe_message("A01", run=run, patient=patient, stay=stay, at=admit, admit=admit))
        out.append(probe_message("A03", run=run, patient=patient, stay=stay, at=leave, admit=admit,
                                 discharge=leave))
    return out


def probe_admission(run: int, patient: int, now: dt.datetime) -> tuple[str, bytes]:
    """(visit number, today's admission with a substance use disorder on the chart)."""
    admit = now - dt.timedelta(minutes=5)
    raw = probe_message("A01", run=run, patient=patient, stay=3, at=now, admit=admit, dx="F10.20")
    return f"PB{run}P{patient}V3", raw


# --- the care teams: a webhook receiver -------------------------------------------------


@dataclass
class Arrivals:
    """When each candidate notice arrived (by visit number), and how many notices in all."""

    candidates: dict[str, float] = field(default_factory=dict)
    wall: dict[str, float] = field(default_factory=dict)  # the same arrivals, time.time()
    notices: int = 0
    bad_signatures: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)


def receiver_app(secret: str, arrivals: Arrivals) -> FastAPI:
    from notifier.channels.webhook import verify

    app = FastAPI()

    @app.post("/hooks/{team}")
    async def hook(team: str, request: Request) -> dict[str, str]:
        body = await request.body()
        now = time.perf_counter()
        if not verify(secret, request.headers.get("x-wpc-signature"), body, time.time()):
            arrivals.bad_signatures += 1
            raise HTTPException(401, "bad signature")
        for notice in json.loads(body)["notices"]:
            arrivals.notices += 1
            visit = (notice.get("encounter") or {}).get("visit_number")
            if notice.get("event") == "candidate" and visit:
                arrivals.candidates.setdefault(visit, now)
                arrivals.wall.setdefault(visit, time.time())
        arrivals.changed.set()
        return {"status": "ok"}

    return app


def notify_config(receiver: str) -> str:
    """Every program's team delivers to the receiver, at once (no bundling window)."""
    teams = "\n".join(
        f"  - {{id: team-{p.lower()}, name: {p} team, programs: [{p}], endpoints: "
        f"[{{name: webhook, channel: webhook, url: \"{receiver}/hooks/{p.lower()}\", secret_env: {_SECRET_ENV}}}]}}"
        for p in ("TOC", "ISR", "SUD-ENS")
    )
    return ("version: bench-pipeline-1\nportal_url: https://portal.example.org\nbundle_window_s: 0\n"
            "part2: {facilities: [], sud_code_prefixes: [F1], without_consent: redact}\n"
            f"care_teams:\n{teams}\n")


def bench_rules(example: Path) -> str:
    """The example rules with room for every probe: a full program proposes nobody."""
    text = example.read_text(encoding="utf-8")
    for program in ("TOC", "ISR", "SUD-ENS"):
        start = text.index(f"  {program}: {{capacity: ")
        end = text.index(",", start)
        text = text[:start] + f"  {program}: {{capacity: 1000000" + text[end:]
    return text.replace('version: "', 'version: "bench-', 1)


# --- CPU of the system's processes, from /proc ------------------------------------------


def _stat(pid: int) -> tuple[int, float, str] | None:
    """(parent pid, user + system CPU seconds, name) of ``pid``; None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    end = data.rindex(b")")
    fields = data[end + 2 :].split()
    name = data[data.index(b"(") + 1 : end].decode(errors="replace")
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / _CLK_TCK, name


def process_table() -> dict[int, tuple[int, float, str]]:
    """pid -> (parent pid, CPU seconds, name) of every process we may read."""
    table = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = _stat(int(name))
            if st is not None:
                table[int(name)] = st
    return table


def descendants(table: dict[int, tuple[int, float, str]], root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid, (ppid, _cpu, _name) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = set(), [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


@dataclass
class CpuGroups:
    """The processes of each part of the system, named once at each sample."""

    roots: dict[str, int]  # group -> the pid whose own CPU counts (listener, enrollment, ...)
    trees: dict[str, int]  # group -> the pid whose descendants count (its workers, PostgreSQL's backends)
    extra: Callable[[], dict[str, set[int]]] | None = None  # more pids per group (external PostgreSQL)
    named: dict[str, str] = field(default_factory=dict)  # process name -> group, before the trees' groups

    def sample(self, table: dict[int, tuple[int, float, str]] | None = None,
               extra: dict[str, set[int]] | None = None) -> dict[str, dict[int, float]]:
        """group -> {pid: CPU seconds}."""
        table = table if table is not None else process_table()
        out: dict[str, dict[int, float]] = {}
        for group, pid in self.roots.items():
            if pid in table:
                out.setdefault(group, {})[pid] = table[pid][1]
        for group, pid in self.trees.items():
            pids = descendants(table, pid) | ({pid} if pid not in self.roots.values() else set())
            for p in pids:
                if p in table:
                    out.setdefault(self.named.get(table[p][2], group), {})[p] = table[p][1]
        for group, pids in (extra or {}).items():
            out.setdefault(group, {}).update({p: table[p][1] for p in pids if p in table})
        return out


def cpu_used(before: dict[str, dict[int, float]], after: dict[str, dict[int, float]]) -> dict[str, float]:
    """CPU seconds per group between two samples (a process started meanwhile counts from 0)."""
    return {group: sum(cpu - before.get(group, {}).get(pid, 0.0) for pid, cpu in pids.items())
            for group, pids in after.items()}


# --- talking to the system --------------------------------------------------------------


class MllpSender:
    """One MLLP connection: send a message, read its ACK (MSA-1 returned)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        from adt_listener.mllp import MllpFramer

        self._reader, self._writer = reader, writer
        self._framer = MllpFramer()

    @classmethod
    async def connect(cls, port: int) -> MllpSender:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    def write(self, message: bytes) -> None:
        from adt_listener.mllp import encode

        self._writer.write(encode(message))

    async def ack(self, timeout_s: float = 30.0) -> str:
        from adt_listener.mllp import Frame
        from bench.ingest import _ack_code

        while True:  # one message in flight: the next frame is its ACK
            data = await asyncio.wait_for(self._reader.read(65536), timeout_s)
            if not data:
                raise ConnectionError("the listener closed the connection")
            for event in self._framer.feed(data):
                if isinstance(event, Frame):
                    return _ack_code(event.payload)

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()


_APPLIED = "SELECT count(*) FROM processed_event"
_ACCEPTED = "SELECT count(*) FROM adt_message WHERE ack_code = 'AA'"
_QUEUED = "SELECT count(*) FROM adt_event_queue"
# Every message accepted takes the next id of adt_event_queue as it is stored: the sampler's
# count of accepted messages, read in constant time. (`_ACCEPTED` scans every stored message,
# ~18 ms at 30,000 of them: each second, PostgreSQL CPU taken from the system it measures.)
_ACCEPTED_SO_FAR = ("SELECT coalesce(last_value, 0) FROM pg_sequences WHERE schemaname = current_schema() "
                    "AND sequencename = split_part(pg_get_serial_sequence('adt_event_queue', 'id'), '.', 2)")


@dataclass
class Phase:
    rate: float
    sent: int = 0  # background messages written
    accepted: int = 0  # background AA/CA ACKs
    achieved: float = 0.0  # background accepted / time until its last ACK
    errors: int = 0  # background timeouts, refusals, probes refused
    probes: int = 0
    delivered: int = 0
    latencies: list[float] = field(default_factory=list)
    drain_s: float = math.nan
    caught_up: bool = False
    cpu_s: dict[str, float] = field(default_factory=dict)
    events: int = 0
    wall_sent: dict[str, float] = field(default_factory=dict)  # probe visit -> time.time() of its send
    max_queue: int = 0  # most accepted messages waiting for their adt.events record (derivation)
    max_behind: int = 0  # most accepted messages not yet applied by the enrollment service
    stages: dict[str, float | None] = field(default_factory=dict)  # stage -> median seconds over the probes
    shares: machine.Shares = field(default_factory=lambda: machine.Shares(None, None))  # of the whole phase

    def pct(self, q: float) -> float | None:
        if not self.latencies:
            return None
        ordered = sorted(self.latencies)
        return ordered[max(0, math.ceil(q * len(ordered)) - 1)]

    @property
    def sustained(self) -> bool:
        return (self.caught_up and self.errors == 0 and self.delivered == self.probes
                and (self.rate == 0 or self.achieved >= 0.98 * self.rate) and self.drain_s <= DRAIN_BOUND_S)


def poll_interval(left: int) -> float:
    """Seconds until the next poll with ``left`` events still to apply: 50 ms for the last few
    hundred, up to 0.5 s while the service has seconds of work left (it applies a few thousand
    a second)."""
    return min(0.5, max(0.05, left / 4000))


class Bench:
    def __init__(self, options: PipelineOptions, database_url: str, mllp_port: int, arrivals: Arrivals,
                 cpu: CpuGroups, out: Callable[[str], None]) -> None:
        self.options = options
        self.database_url = database_url
        self.mllp_port = mllp_port
        self.arrivals = arrivals
        self.cpu = cpu
        self.out = out
        self.run_id = secrets.randbelow(900_000) + 100_000
        self._next_probe = 0
        self._extra: dict[str, set[int]] = {}
        self._db: Any = None  # asyncpg.Connection, opened by the first `_scalar`
        self._db_lock = asyncio.Lock()

    async def _scalar(self, sql: str) -> int:
        """On one connection kept for the run: a connection per poll (20 a second while a phase
        drains) cost PostgreSQL a backend start each, charged to the system under test."""
        import asyncpg

        async with self._db_lock:
            if self._db is None:
                self._db = await asyncpg.connect(_asyncpg_dsn(self.database_url))
            return int(await self._db.fetchval(sql))

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None

    async def load_history(self, patients: int) -> None:
        """Every probe patient's past stays, sent and applied before the phases."""
        now = dt.datetime.now(_PT)
        sender = await MllpSender.connect(self.mllp_port)
        applied_before = await self._scalar(_APPLIED)
        sent = 0
        try:
            for p in range(patients):
                for raw in probe_history(self.run_id, p, now):
                    sender.write(raw)
                    code = await sender.ack()
                    if code not in ("AA", "CA"):
                        raise RuntimeError(f"the listener answered {code} to a probe's history")
                    sent += 1
        finally:
            await sender.close()
        await self._until_applied(applied_before + sent, 180.0)

    async def _until_applied(self, target: int, timeout_s: float) -> bool:
        """Poll the count of applied events until it reaches ``target``: every 50 ms near the
        end, less often while thousands are left (the count scans a growing table, and
        PostgreSQL's CPU is the system's, which is draining its backlog meanwhile)."""
        deadline = time.monotonic() + timeout_s
        while (left := target - await self._scalar(_APPLIED)) > 0:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(poll_interval(left))
        return True

    async def probe_once(self, sender: MllpSender, phase: Phase, sent_at: dict[str, float]) -> None:
        visit, raw = probe_admission(self.run_id, self._next_probe, dt.datetime.now(_PT))
        self._next_probe += 1
        sent_at[visit] = time.perf_counter()
        phase.wall_sent[visit] = time.time()
        sender.write(raw)
        code = await sender.ack()
        phase.probes += 1
        if code not in ("AA", "CA"):
            phase.errors += 1

    async def warm_up(self) -> float:
        """One probe through the whole system (the consumer groups have their partitions)."""
        sender = await MllpSender.connect(self.mllp_port)
        sent_at: dict[str, float] = {}
        try:
            await self.probe_once(sender, Phase(0.0), sent_at)
        finally:
            await sender.close()
        (visit, at), = sent_at.items()
        await self._until_delivered([visit], PROBE_TIMEOUT_S)
        if visit not in self.arrivals.candidates:
            raise RuntimeError("the warm-up probe's candidate never reached the webhook receiver")
        return self.arrivals.candidates[visit] - at

    async def _until_delivered(self, visits: Sequence[str], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while any(v not in self.arrivals.candidates for v in visits) and time.monotonic() < deadline:
            self.arrivals.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.arrivals.changed.wait(), 0.5)

    def _epoch(self, rate: float) -> str | None:
        """The background feed's start for ``--background current``: its messages dated up to now."""
        from bench.synthetic import epoch_ending

        o = self.options
        if o.background == "history":
            return None
        messages = int(rate * o.duration) + o.connections  # what the load generator generates
        return epoch_ending(dt.datetime.now(dt.UTC), messages).isoformat()

    async def phase(self, rate: float, seed: int) -> Phase:
        from bench.ingest import LoadSpec, _drive

        o = self.options
        phase = Phase(rate)
        accepted_before = await self._scalar(_ACCEPTED)
        applied_before = await self._scalar(_APPLIED)
        cpu_before = self.cpu.sample(extra=self._extra_pids())
        ticks_before = machine.ticks()
        sent_at: dict[str, float] = {}
        sender = await MllpSender.connect(self.mllp_port)
        started = time.perf_counter()

        async def probes() -> None:
            n = max(1, int(o.duration / o.probe_interval))
            for i in range(n):
                delay = started + 0.5 + i * o.probe_interval - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                await self.probe_once(sender, phase, sent_at)

        sampling = asyncio.create_task(self._sample_backlog(phase, applied_before))
        try:
            if rate > 0:
                spec = LoadSpec(port=self.mllp_port, mode="open", seed=seed, connections=o.connections,
                                duration=o.duration, rate=rate, epoch=self._epoch(rate))
                load, _ = await asyncio.gather(_drive(spec, "background"), probes())
                phase.sent, phase.accepted = load.sent, load.accepted
                phase.achieved = load.accepted / load.elapsed_s if load.elapsed_s else 0.0
                phase.errors += load.errors + sum(n for c, n in load.codes.items() if c not in ("AA", "CA"))
            else:
                await probes()
        finally:
            await sender.close()
        sending_ended = time.perf_counter()
        # Caught up: every message accepted meanwhile applied by the enrollment service.
        accepted = await self._scalar(_ACCEPTED) - accepted_before
        phase.caught_up = await self._until_applied(applied_before + accepted, 120.0)
        await self._until_delivered(list(sent_at), PROBE_TIMEOUT_S)
        phase.drain_s = time.perf_counter() - sending_ended
        sampling.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampling
        phase.cpu_s = cpu_used(cpu_before, self.cpu.sample(extra=self._extra_pids()))
        phase.shares = machine.shares(ticks_before, machine.ticks())
        phase.events = phase.sent + phase.probes
        phase.latencies = [self.arrivals.candidates[v] - t for v, t in sent_at.items() if v in self.arrivals.candidates]
        phase.delivered = len(phase.latencies)
        phase.stages = await self._stages(phase)
        return phase

    async def _sample_backlog(self, phase: Phase, applied_before: int) -> None:
        """Every second: the derivation queue, and accepted messages the enrollment service has
        not applied yet (both reach their maxima where a stage falls behind)."""
        import asyncpg

        conn = await asyncpg.connect(_asyncpg_dsn(self.database_url))
        try:
            accepted_before = await conn.fetchval(_ACCEPTED_SO_FAR) or 0
            while True:
                queued, accepted, applied = await conn.fetchrow(
                    f"SELECT ({_QUEUED}), ({_ACCEPTED_SO_FAR}), ({_APPLIED})")
                phase.max_queue = max(phase.max_queue, int(queued))
                phase.max_behind = max(phase.max_behind,
                                       ((accepted or 0) - accepted_before) - (applied - applied_before))
                await asyncio.sleep(1.0)
        finally:
            await conn.close()

    async def _stages(self, phase: Phase) -> dict[str, float | None]:
        """Where a probe's time went, median per stage, from the rows each service wrote
        (their times are the database's clock, the same machine's as ours)."""
        import asyncpg

        visits = list(phase.wall_sent)
        conn = await asyncpg.connect(_asyncpg_dsn(self.database_url))
        try:
            stored = {r[0][: -len("A01")]: r[1] for r in await conn.fetch(
                "SELECT control_id, extract(epoch FROM received_at)::float8 FROM adt_message "
                "WHERE control_id = ANY($1::text[])", [f"{v}A01" for v in visits])}
            decided = {r[0]: r[1] for r in await conn.fetch(
                "SELECT e.visit_number, extract(epoch FROM c.created_at)::float8 FROM candidate c "
                "JOIN encounter e ON e.id = c.encounter_id WHERE e.visit_number = ANY($1::text[])", visits)}
            planned: dict[str, tuple[float, float | None]] = {}
            for body, created, finished in await conn.fetch(
                    "SELECT body, extract(epoch FROM created_at)::float8, extract(epoch FROM finished_at)::float8 "
                    "FROM delivery WHERE created_at >= to_timestamp($1)", min(phase.wall_sent.values(), default=0.0)):
                for notice in json.loads(bytes(body)).get("notices", []):
                    visit = (notice.get("encounter") or {}).get("visit_number")
                    if notice.get("event") == "candidate" and visit in phase.wall_sent:
                        planned.setdefault(visit, (created, finished))
        finally:
            await conn.close()
        arrived = {v: self.arrivals.wall.get(v) for v in visits}
        marks = {v: (phase.wall_sent[v], stored.get(v), decided.get(v), *planned.get(v, (None, None)), arrived[v])
                 for v in visits}
        names = ("listener", "to enrollment decision", "to notifier delivery", "to webhook sent", "to received")
        out: dict[str, float | None] = {}
        for i, name in enumerate(names):
            spans = sorted(m[i + 1] - m[i] for m in marks.values()
                           if m[i] is not None and m[i + 1] is not None)
            out[name] = spans[len(spans) // 2] if spans else None
        return out

    def _extra_pids(self) -> dict[str, set[int]]:
        return self.cpu.extra() if self.cpu.extra is not None else {}


def _asyncpg_dsn(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


# --- the run ----------------------------------------------------------------------------


def _env(ready: ServiceSettings, database_url: str, tmp: Path, ports: dict[str, int], secret: str) -> dict[str, str]:
    from bench.ingest import _senders_file
    from enrollment_svc.service import EXAMPLE_RULES

    rules = tmp / "rules.yaml"
    rules.write_text(bench_rules(EXAMPLE_RULES), encoding="utf-8")
    notify = tmp / "notify.yaml"
    notify.write_text(notify_config(f"http://127.0.0.1:{ports['receiver']}"), encoding="utf-8")
    # The topics and consumer groups of the given settings (a test's own, or the defaults).
    names = {f"WPC_{name.upper()}": str(getattr(ready, name)) for name in type(ready).model_fields
             if name.startswith("topic_") or name.endswith("_group_id")}
    return {
        **os.environ,
        **names,
        "WPC_DATABASE_URL": database_url,
        "WPC_KAFKA_BOOTSTRAP_SERVERS": ready.kafka_bootstrap_servers,
        "WPC_MLLP_HOST": "127.0.0.1",
        "WPC_MLLP_PORT": str(ports["mllp"]),
        "WPC_HTTP_HOST": "127.0.0.1",
        "WPC_LISTENER_HTTP_PORT": str(ports["listener"]),
        "WPC_ENROLLMENT_HTTP_PORT": str(ports["enrollment"]),
        "WPC_NOTIFIER_HTTP_PORT": str(ports["notifier"]),
        "WPC_SENDERS_FILE": str(_senders_file(tmp / "senders.yaml", "sampled")),
        "WPC_RULES_FILE": str(rules),
        "WPC_NOTIFY_FILE": str(notify),
        "WPC_DATA_DIR": str(tmp),
        _SECRET_ENV: secret,
    }


async def _wait_http(port: int, path: str, child: Any, timeout_s: float) -> None:
    from bench.ingest import _http_status

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not child.running():
            raise RuntimeError(f"{child.name} exited with {child.proc.returncode}:\n{child.log_tail()}")
        with contextlib.suppress(OSError, ValueError, IndexError, TimeoutError):
            if await _http_status(port, path) == 200:
                return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"{child.name} not ready within {timeout_s:.0f} s:\n{child.log_tail()}")


async def pipeline(options: PipelineOptions, settings: ServiceSettings, *, out: Callable[[str], None] = print
                   ) -> dict[str, Any]:
    """Run `wpc bench pipeline`; print the table and the JSON line; return the JSON object."""
    from services import db
    from services.bus import KafkaPublisher
    from services.httpserver import HttpServer
    from services.infrastructure import Servers, infrastructure

    servers = Servers()
    with tempfile.TemporaryDirectory(prefix="wpc-bench-pipeline-") as tmp_name:
        tmp = Path(tmp_name)
        external_db = bool(settings.database_url)
        async with infrastructure(settings.model_copy(update={"data_dir": tmp}), servers) as ready:
            database_url, created = ready.database_url, None
            if external_db:
                database_url, created = await db.create_scratch_database(ready.database_url, "wpc_bench")
            publisher = KafkaPublisher.of(ready)
            try:
                await publisher.ensure_topics([ready.topic_adt_events, ready.topic_enrollment_candidates,
                                               ready.topic_enrollment_events])
            finally:
                await publisher.close()
            secret = secrets.token_urlsafe(24)
            arrivals = Arrivals()
            ports = {name: _free() for name in ("mllp", "listener", "enrollment", "notifier", "receiver")}
            receiver = HttpServer(receiver_app(secret, arrivals), "127.0.0.1", ports["receiver"])
            await receiver.start()
            try:
                reference = machine.reference_ms()
                report = await _with_services(options, ready, database_url, tmp, ports, secret, arrivals,
                                              servers, external_db, out)
                report["reference_ms"] = [reference, machine.reference_ms()]
            finally:
                await receiver.stop()
                if created is not None:
                    await db.drop_database(database_url, created)
    _print_report(report, out)
    return report


def _free() -> int:
    from services.embedded import free_port

    return free_port()


async def _with_services(
    options: PipelineOptions, ready: ServiceSettings, database_url: str, tmp: Path, ports: dict[str, int],
    secret: str, arrivals: Arrivals, servers: Any, external_db: bool, out: Callable[[str], None],
) -> dict[str, Any]:
    from bench.ingest import _Child, _wait_ready

    env = _env(ready, database_url, tmp, ports, secret)
    wpc = [sys.executable, "-m", "wpc.cli"]
    children: list[_Child] = []
    bench: Bench | None = None
    try:
        listener = _Child("wpc listener", [*wpc, "listener", "--migrate"], tmp / "listener.log", env)
        children.append(listener)
        await _wait_ready(ports["listener"], listener, 120)
        enrollment = _Child("wpc enrollment", [*wpc, "enrollment"], tmp / "enrollment.log", env)
        notifier = _Child("wpc notifier", [*wpc, "notifier"], tmp / "notifier.log", env)
        children += [enrollment, notifier]
        await _wait_http(ports["enrollment"], "/healthz", enrollment, 60)
        await _wait_http(ports["notifier"], "/healthz", notifier, 60)

        from adt_listener.conformance import CONFORMANCE_PROCESS
        from adt_listener.events import DERIVATION_PROCESS

        trees = {"listener": listener.proc.pid}
        if servers.pg is not None and servers.pg.pid is not None:
            trees["postgresql"] = servers.pg.pid
        roots = {"listener": listener.proc.pid, "enrollment": enrollment.proc.pid, "notifier": notifier.proc.pid}
        if servers.broker is not None and servers.broker.pid is not None:
            roots["broker"] = servers.broker.pid
        cpu = CpuGroups(roots, trees, named={DERIVATION_PROCESS: "derivation", CONFORMANCE_PROCESS: "conformance"})
        bench = Bench(options, database_url, ports["mllp"], arrivals, cpu, out)
        refresh: Callable[[], Awaitable[None]] | None = None
        if external_db:
            backends: set[int] = set()

            async def backends_of_our_database() -> None:
                import asyncpg

                conn = await asyncpg.connect(_asyncpg_dsn(database_url))
                try:
                    rows = await conn.fetch("SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                                            "AND pid <> pg_backend_pid()")
                finally:
                    await conn.close()
                backends.clear()
                backends.update(r[0] for r in rows)

            def external() -> dict[str, set[int]]:
                return {"postgresql": set(backends)}

            cpu.extra = external
            refresh = backends_of_our_database
        probes = sum(max(1, int(options.duration / options.probe_interval)) for _ in options.rates) + 1
        out(f"loading the history of {probes} probe patients ...")
        await bench.load_history(probes)
        warm = await bench.warm_up()
        out(f"warm-up probe delivered in {warm * 1000:.0f} ms")
        phases = []
        for i, rate in enumerate(options.rates):
            if refresh is not None:
                await refresh()
            out(f"phase {i + 1}/{len(options.rates)}: background {rate:g} ADT/s for {options.duration:g} s ...")
            phases.append(await bench.phase(rate, bench.run_id * 10 + i))
            await asyncio.sleep(1.0)
        return _report(options, phases, external_db, servers.broker is None)
    except Exception:
        for child in children:  # what the services said, before their logs go with the temporary directory
            out(f"--- {child.name} (last lines of its log)\n{child.log_tail(40)}")
        raise
    finally:
        if bench is not None:
            await bench.close()
        for child in reversed(children):
            await child.stop()


# --- the report -------------------------------------------------------------------------

_GROUPS = ("listener", "derivation", "conformance", "enrollment", "notifier", "postgresql", "broker")


def _ms(x: float | None) -> float | None:
    return None if x is None or math.isnan(x) else round(x * 1000, 1)


def _report(options: PipelineOptions, phases: list[Phase], external_db: bool, external_broker: bool
            ) -> dict[str, Any]:
    rows = []
    for p in phases:
        per_event = {g: round(p.cpu_s.get(g, 0.0) * 1000 / p.events, 3) if p.events else None for g in _GROUPS}
        total = round(sum(p.cpu_s.values()) * 1000 / p.events, 3) if p.events else None
        rows.append({
            "rate_per_s": p.rate, "achieved_per_s": round(p.achieved, 1), "background_sent": p.sent,
            "background_accepted": p.accepted, "errors": p.errors, "probes": p.probes, "delivered": p.delivered,
            "p50_ms": _ms(p.pct(0.50)), "p99_ms": _ms(p.pct(0.99)), "max_ms": _ms(p.pct(1.0)),
            "drain_s": round(p.drain_s, 2), "caught_up": p.caught_up, "sustained": p.sustained,
            "max_derivation_queue": p.max_queue, "max_enrollment_behind": p.max_behind,
            "cpu_ms_per_event": {**per_event, "total": total},
            "cpu_s": {g: round(v, 2) for g, v in p.cpu_s.items()},
            "stages_p50_ms": {k: _ms(v) for k, v in p.stages.items()},
            **p.shares.as_json(),
        })
    sustained = [p.rate for p in phases if p.sustained]
    goals: dict[str, str] = {}
    for p in phases:
        bound = GOAL_P99_S.get(p.rate)
        if bound is not None:
            p99 = p.pct(0.99)
            goals[f"p99_lt_{bound:g}s_at_{p.rate:g}"] = (
                "PASS" if p.sustained and p99 is not None and p99 < bound else "FAIL")
        if p.rate == 0:
            p50 = p.pct(0.50)
            goals["idle_p50_lt_150ms"] = "PASS" if p50 is not None and p50 < GOAL_IDLE_P50_S else "FAIL"
    busiest = max((p for p in phases if p.rate > 0), key=lambda p: p.rate, default=None)
    if busiest is not None and busiest.events:
        goals[f"cpu_le_{GOAL_CPU_MS:g}ms_per_event_at_{busiest.rate:g}"] = (
            "PASS" if sum(busiest.cpu_s.values()) * 1000 / busiest.events <= GOAL_CPU_MS else "FAIL")
    return {
        "bench": "pipeline", "cpus": os.cpu_count(), "duration_s": options.duration,
        "connections": options.connections, "probe_interval_s": options.probe_interval,
        "background": options.background,
        "postgresql": "external" if external_db else "embedded",
        "broker": "external" if external_broker else "embedded",
        "phases": rows, "highest_sustained_per_s": max(sustained) if sustained else None, "goals": goals,
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:,.0f}"


def _print_report(report: dict[str, Any], out: Callable[[str], None]) -> None:
    out("")
    dated = "dated up to now" if report["background"] == "current" else "last year's (history)"
    out(f"wpc bench pipeline: {report['cpus']} CPUs, {report['duration_s']:g} s per rate, background {dated} over "
        f"{report['connections']} MLLP connections, a probe admission every {report['probe_interval_s']:g} s; "
        f"PostgreSQL {report['postgresql']}, broker {report['broker']}")
    out(f"{'ADT/s':>7}{'achieved':>10}{'errors':>8}{'probes':>8}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}"
        f"{'drain s':>9}{'max queue':>11}{'max behind':>12}  sustained")
    for r in report["phases"]:
        out(f"{r['rate_per_s']:>7,.0f}{r['achieved_per_s']:>10,.1f}{r['errors']:>8}"
            f"{r['delivered']:>4}/{r['probes']:<3}{_fmt(r['p50_ms']):>9}{_fmt(r['p99_ms']):>9}"
            f"{_fmt(r['max_ms']):>9}{r['drain_s']:>9.2f}{r['max_derivation_queue']:>11,}"
            f"{r['max_enrollment_behind']:>12,}  {'yes' if r['sustained'] else 'NO'}")
    out("max queue: accepted messages waiting for their adt.events record; max behind: accepted messages "
        "not yet applied by the enrollment service (sampled every second)")
    out("")
    out("CPU ms per ADT event (start of the phase to the end of its drain, / messages sent)")
    out(f"{'ADT/s':>7}" + "".join(f"{g:>13}" for g in (*_GROUPS, "total")))
    for r in report["phases"]:
        c = r["cpu_ms_per_event"]
        out(f"{r['rate_per_s']:>7,.0f}" + "".join(
            f"{'n/a' if c[g] is None else format(c[g], '.3f'):>13}" for g in (*_GROUPS, "total")))
    for r in report["phases"]:
        out(f"{r['rate_per_s']:>7,.0f} ADT/s: "
            + machine.Shares(r["machine_cpu_busy"], r["host_steal"]).describe())
    out("")
    out("where a probe's time goes, median per stage (ms; from the times the services recorded)")
    names = list(report["phases"][0]["stages_p50_ms"]) if report["phases"] else []
    out(f"{'ADT/s':>7}" + "".join(f"{n:>24}" for n in names))
    for r in report["phases"]:
        out(f"{r['rate_per_s']:>7,.0f}" + "".join(f"{_fmt(r['stages_p50_ms'][n]):>24}" for n in names))
    out("")
    out(f"highest rate sustained (lag bounded: drained within {DRAIN_BOUND_S:g} s): "
        f"{_fmt(report['highest_sustained_per_s'])} ADT/s")
    for goal, verdict in report["goals"].items():
        out(f"goal {goal}: {verdict}")
    out(f"load average at the end: {report['load_average']}")
    out(machine.describe_reference(report["reference_ms"]))
    out(json.dumps(report, separators=(",", ":")))


# --- command line ------------------------------------------------------------------------


def _rates(text: str) -> tuple[float, ...]:
    try:
        rates = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--rates takes numbers separated by commas, not {text!r}") from None
    if not rates or any(r < 0 for r in rates):
        raise argparse.ArgumentTypeError("--rates takes one or more rates >= 0")
    return rates


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rates", type=_rates, default=PipelineOptions.rates,
                        help="background ADT messages/s, one phase each (0,200,500,1000)")
    parser.add_argument("--duration", type=float, default=PipelineOptions.duration,
                        help="seconds per phase (20)")
    parser.add_argument("--connections", type=int, default=PipelineOptions.connections,
                        help="MLLP connections of the background load (8)")
    parser.add_argument("--probe-interval", type=float, default=PipelineOptions.probe_interval,
                        help="seconds between two candidate-making admissions (0.5)")
    parser.add_argument("--background", choices=BACKGROUNDS, default=PipelineOptions.background,
                        help="background dated up to now (current: live traffic, the per-event path) or "
                        "last year's (history: the enrollment service's bulk path); default current")


def run(args: argparse.Namespace) -> int:
    from adt_listener.settings import ListenerSettings
    from services import lifecycle
    from services.settings import load_settings

    if args.duration <= 0 or args.probe_interval <= 0 or args.connections < 1:
        print("wpc bench pipeline: --duration and --probe-interval must be > 0, --connections >= 1", file=sys.stderr)
        return 2
    options = PipelineOptions(rates=args.rates, duration=args.duration, connections=args.connections,
                              probe_interval=args.probe_interval, background=args.background)

    report = lifecycle.run_interruptible(lambda: pipeline(options, load_settings(ListenerSettings)))
    if report is None:
        print("interrupted: servers stopped", file=sys.stderr)
        return 130
    lost = any(p["delivered"] < p["probes"] or not p["caught_up"] for p in report["phases"])
    return 1 if lost else 0
