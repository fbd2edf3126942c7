"""What the broker lost is published again, from PostgreSQL (issue 10 part 3).

The embedded broker (Tansu) keeps topics, and consumer groups' offsets, in memory: when
it restarts (alone, or with `wpc up`) the records the relays had published but the
consumers had not read are gone. A real Kafka cluster keeps what it acknowledged (acks=all,
replication, no unclean election: deploy/), but may still lose it to an operator's
mistake or a cluster rebuilt from scratch. PostgreSQL is the system of record, so:

**Keep** (`Retention.keeps`). A relay no longer forgets a published row: it moves it to
its journal (``outbox_sent``, ``adt_event_sent``: the same statement that used to delete
it) with the partition and offset the broker acknowledged. Only rows of topics some
in-system consumer group reads are kept (adt.events: the enrollment service and the
notifier; enrollment.*: the notifier); dead-letter topics and the like are forgotten at
once, as before.

**Trim** (`trim_points`). Every ``replay_check_interval_s`` the leading relay reads each
reading group's committed offsets and drops the rows below all of them: what every group
has processed is never needed again (consumers commit only after their own commit). So
the journal holds about the consumers' lag, and never more than ``replay_retain_max`` rows
(beyond that the oldest go, counted in ``wpc_replay_dropped_total``: a consumer stopped for
long is not worth unbounded storage).

**Notice a loss** (`loss_evidence`), on the same round and right after the broker was
unreachable: a cluster id other than the one the rows were published to (`wpc up` starts
each Tansu with a new one; a rebuilt Kafka cluster has a new one too); a partition that
ends at or below the start of the last batch acknowledged there (Tansu reports a
partition's end as its last batch's base + 1, Kafka as its last offset + 1: a comparison
with the base holds for both); a group's committed offset that went backwards or vanished;
an acknowledgment below an earlier one on the same partition.

**Publish again**. Every kept row, in id order (the order they were first published in,
so order per key holds), recording the new offsets. When the loss is seen while consumers
may be running, the relay first waits ``replay_settle_s``: a running consumer keeps its
position in the lost log until its heartbeat finds the group gone and it rejoins (Tansu
answers a fetch past the end of a partition with nothing, not with "out of range"), and
records published before that, at offsets below its old position, would be skipped. Once
rejoined, it has no committed offset on the new broker and starts from the beginning.
Consumers deduplicate by event id, so what they had already processed costs a lookup.

Why not make the broker durable instead: the Tansu in the pinned wheel has only its memory
and S3 storage engines (no PostgreSQL, no SQLite), and an S3 service is one more server to
run. Why not deduplicate on the publishing side: consumers may live in other databases
(production), where the relay cannot see what they processed; Kafka's committed offsets
are the one record of that which every deployment has.

What remains: a consumer that handled records from the old broker and commits their
offsets to the new one in the instant between (a restart within one batch's handling)
commits an offset of the old log into the new; Tansu accepts it, and that consumer skips
what lies below it in the new log. The settle wait makes the window the handling of one
batch, not the heartbeat interval.

Cost on the hot path: one statement per published batch as before (a CTE that deletes the
rows and inserts the kept ones); the trim and the broker reads run on the check interval,
not per batch.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

from prometheus_client import Counter, Gauge

from services.bus import Ack, BrokerView, Publisher, Record, TopicPartition
from services.lifecycle import pause
from services.settings import ServiceSettings

log = logging.getLogger(__name__)

KEPT = Gauge("wpc_replay_kept_rows", "Published records kept until every consumer group has read them", ["journal"])
LOSSES = Counter("wpc_broker_losses_total", "Times a relay found the broker had lost what it published", ["journal"])
REPUBLISHED = Counter("wpc_replay_republished_total", "Records published again after a broker loss", ["journal"])
DROPPED = Counter("wpc_replay_dropped_total", "Kept records dropped unread, past WPC_REPLAY_RETAIN_MAX", ["journal"])

_REPLAY_BATCH = 500
_IDLE_S = 0.5  # a relay this long without publishing checks the broker before it publishes again


@dataclass(frozen=True)
class Retention:
    """Which topics' records are kept, until which groups have read them, and how long at most."""

    readers: Mapping[str, tuple[str, ...]]  # topic -> the in-system consumer groups that read it
    max_rows: int = 200_000
    check_interval_s: float = 2.0
    settle_s: float = 10.0

    def keeps(self, topic: str) -> bool:
        return self.max_rows > 0 and bool(self.readers.get(topic))


def retention_of(settings: ServiceSettings) -> Retention:
    """The consumer groups of this system, by topic, from the settings every service shares."""
    return Retention(
        readers={
            settings.topic_adt_events: (settings.enrollment_group_id, settings.notifier_group_id),
            settings.topic_enrollment_candidates: (settings.notifier_group_id,),
            settings.topic_enrollment_events: (settings.notifier_group_id,),
        },
        max_rows=settings.replay_retain_max,
        check_interval_s=settings.replay_check_interval_s,
        settle_s=settings.replay_settle_s,
    )


# --- the decisions (pure) -----------------------------------------------------------------------


def loss_evidence(
    *,
    known_cluster: str | None,
    cluster: str | None,
    bases: Mapping[TopicPartition, int],
    ends: Mapping[TopicPartition, int],
    seen: Mapping[str, Mapping[TopicPartition, int]],
    committed: Mapping[str, Mapping[TopicPartition, int]],
) -> str | None:
    """Why the broker may have lost records we published (one line, ids and numbers only),
    or None. ``bases``: per partition, an offset the broker must still hold (the base of
    the last batch it acknowledged there); ``seen``: committed offsets read before."""
    if known_cluster is not None and cluster is not None and cluster != known_cluster:
        return f"the broker is a new cluster ({cluster}; the records were published to {known_cluster})"
    for (topic, partition), base in sorted(bases.items()):
        end = ends.get((topic, partition))
        if end is not None and end <= base:
            return f"{topic}[{partition}] ends at offset {end}, but offset {base} was acknowledged there"
    for group, before in sorted(seen.items()):
        now = committed.get(group, {})
        for (topic, partition), offset in sorted(before.items()):
            if (topic, partition) not in now:
                return f"group {group} no longer has a committed offset on {topic}[{partition}] (was {offset})"
            if now[(topic, partition)] < offset:
                return (f"group {group}'s committed offset on {topic}[{partition}] went back "
                        f"from {offset} to {now[(topic, partition)]}")
    return None


def trim_points(
    readers: Mapping[str, tuple[str, ...]],
    committed: Mapping[str, Mapping[TopicPartition, int]],
    partitions: Sequence[TopicPartition],
) -> dict[TopicPartition, int]:
    """Per kept partition, the offset below which every group reading its topic has committed
    (a partition some reader never committed on keeps everything)."""
    points: dict[TopicPartition, int] = {}
    for tp in partitions:
        groups = readers.get(tp[0], ())
        offsets = [committed.get(g, {}).get(tp) for g in groups]
        if groups and all(o is not None for o in offsets):
            points[tp] = min(o for o in offsets if o is not None)
    return points


def regressed(bases: Mapping[TopicPartition, int], acks: Sequence[tuple[str, Ack]]) -> bool:
    """An acknowledgment below the last batch acknowledged on its partition: the log restarted."""
    return any(ack.base < bases.get((topic, ack.partition), -1) for topic, ack in acks)


# --- the journal of published rows ---------------------------------------------------------------


class Replayable(Protocol):
    """What a relay's source offers for keeping and publishing again (`services.outbox`)."""

    journal: str  # the table of kept rows: id, topic, partition, "offset" (and what the source needs)
    journal_scope: str | None  # the service whose rows of the table these are (a ``service`` column), or all

    async def replayable(self, driver: Any, after_id: int, limit: int) -> list[tuple[int, Record]]:
        """Kept rows with ids above ``after_id``, in id order, as records to publish again."""


@dataclass(frozen=True)
class Kept:
    id: int
    topic: str
    partition: int
    offset: int


class Journal:
    """Statements on a journal table (its name comes from code, never from input); with a
    ``scope``, on the rows of that service only (``outbox_sent`` holds every service's).

    ``name`` tells journals apart where a table alone does not: the key of its broker's
    cluster id (``relay_broker``) and the label of its metrics."""

    def __init__(self, table: str, scope: str | None = None) -> None:
        self.table = table
        self.name = table if scope is None else f"{table}/{scope}"
        self._scope: tuple[str, ...] = () if scope is None else (scope,)
        mine = "WHERE service = $1" if scope is not None else ""
        self._extent = f'SELECT topic, partition, min("offset"), count(*) FROM {table} {mine} GROUP BY topic, partition'
        also = "AND j.service = $4" if scope is not None else ""
        self._trim = (f"DELETE FROM {table} j USING unnest($1::text[], $2::int[], $3::bigint[]) AS c(t, p, o) "
                      f'WHERE j.topic = c.t AND j.partition = c.p AND j."offset" < c.o {also}')
        also = "AND service = $2" if scope is not None else ""
        self._bound = (f"DELETE FROM {table} WHERE id <= "
                       f"(SELECT id FROM {table} WHERE true {also} ORDER BY id DESC OFFSET $1 LIMIT 1) {also}")
        self._reoffset = (f'UPDATE {table} j SET partition = c.p, "offset" = c.o '
                          "FROM unnest($1::bigint[], $2::int[], $3::bigint[]) AS c(i, p, o) WHERE j.id = c.i")

    async def extent(self, driver: Any) -> dict[TopicPartition, tuple[int, int]]:
        """Per partition: (lowest kept offset, rows kept)."""
        return {(r[0], int(r[1])): (int(r[2]), int(r[3])) for r in await driver.fetch(self._extent, *self._scope)}

    async def trim(self, driver: Any, points: Mapping[TopicPartition, int]) -> None:
        if points:
            tps = list(points)
            await driver.execute(self._trim, [t for t, _ in tps], [p for _, p in tps], [points[tp] for tp in tps],
                                 *self._scope)

    async def bound(self, driver: Any, max_rows: int) -> int:
        status = await driver.execute(self._bound, max_rows, *self._scope)
        return int(status.split()[-1]) if status else 0

    async def reoffset(self, driver: Any, kept: Sequence[Kept]) -> None:
        if kept:
            await driver.execute(self._reoffset, [k.id for k in kept], [k.partition for k in kept],
                                 [k.offset for k in kept])

    async def cluster(self, driver: Any) -> str | None:
        found = await driver.fetchval("SELECT cluster_id FROM relay_broker WHERE journal = $1", self.name)
        return str(found) if found is not None else None

    async def set_cluster(self, driver: Any, cluster: str) -> None:
        await driver.execute(
            "INSERT INTO relay_broker (journal, cluster_id) VALUES ($1, $2) "
            "ON CONFLICT (journal) DO UPDATE SET cluster_id = excluded.cluster_id, seen_at = now()",
            self.name, cluster,
        )


# --- the keeper: one per relay --------------------------------------------------------------------


@dataclass
class ReplayKeeper:
    """Keeps, trims, notices losses and publishes again, for one relay (its leader's rounds
    call it; nothing here runs concurrently with the relay's publishing)."""

    retention: Retention
    source: Replayable
    publisher: Publisher
    bases: dict[TopicPartition, int] = field(default_factory=dict)
    seen: dict[str, dict[TopicPartition, int]] = field(default_factory=dict)
    suspect: str | None = None  # a loss noticed on the hot path, handled at the next check
    _checked_at: float = 0.0
    _published_at: float = 0.0

    def __post_init__(self) -> None:
        self.journal = Journal(self.source.journal, self.source.journal_scope)
        self._view: BrokerView | None = cast(BrokerView, self.publisher) if _is_view(self.publisher) else None

    def kept(self, pairs: Sequence[tuple[int, Record]], acks: Sequence[Ack]) -> list[Kept]:
        """After a publish: the rows to keep; and a log that restarted under us is noted."""
        self._published_at = time.monotonic()
        by_topic = [(record.topic, ack) for (_id, record), ack in zip(pairs, acks, strict=True)]
        if regressed(self.bases, by_topic) and self.suspect is None:
            self.suspect = "an acknowledgment came back below an earlier one on the same partition"
        self._note(by_topic)
        return [Kept(row_id, record.topic, ack.partition, ack.offset)
                for (row_id, record), ack in zip(pairs, acks, strict=True) if self.retention.keeps(record.topic)]

    def _note(self, acks: Sequence[tuple[str, Ack]]) -> None:
        for topic, ack in acks:
            tp = (topic, ack.partition)
            self.bases[tp] = max(self.bases.get(tp, -1), ack.base)

    def disturbed(self) -> None:
        """The broker was unreachable: check before the next publish."""
        self._checked_at = 0.0

    def due(self) -> bool:
        """A check is due: on the interval; and before publishing after a pause, since a broker
        that restarted while we were idle accepts our next batch without an error (at the
        head of its new log, ahead of what it lost: too late for the order per key). While
        records flow, a restart fails a publish first (`disturbed`)."""
        now = time.monotonic()
        if self.suspect is not None or now - self._checked_at >= self.retention.check_interval_s:
            return True
        idle = min(_IDLE_S, self.retention.check_interval_s)
        return now - self._published_at >= idle and now - self._checked_at >= idle

    async def start(self, driver: Any) -> None:
        """A new leader: what it knows of the broker is the journal (and the cluster id)."""
        self.bases = {tp: low for tp, (low, _rows) in (await self.journal.extent(driver)).items()}
        self.seen = {}
        self.suspect = None
        await self.check(driver, None)

    async def check(self, driver: Any, stop: asyncio.Event | None) -> None:
        """One round: notice a loss (and publish again), else trim. ``stop`` None: a leader's
        first round (no consumer of ours holds a position in a lost log: no settle wait).
        Raises BusUnavailable when the broker cannot be read (the relay backs off)."""
        self._checked_at = time.monotonic()
        view = self._view
        if view is None:
            return
        extent = await self.journal.extent(driver)
        KEPT.labels(journal=self.journal.name).set(sum(rows for _low, rows in extent.values()))
        partitions = sorted(set(extent) | set(self.bases))
        if not partitions and self.suspect is None and stop is not None:
            return  # nothing published, nothing kept: nothing to lose
        cluster = await view.cluster_id()
        known = await self.journal.cluster(driver)
        if not partitions and self.suspect is None:
            if cluster is not None and cluster != known:
                await self.journal.set_cluster(driver, cluster)  # a first round, on an empty journal
            return
        ends = await view.end_offsets(partitions)
        committed = {}
        for group in sorted({g for t, _p in partitions for g in self.retention.readers.get(t, ())}):
            mine = [tp for tp in partitions if group in self.retention.readers.get(tp[0], ())]
            committed[group] = await view.committed(group, mine)
        why = self.suspect or loss_evidence(
            known_cluster=known, cluster=cluster, bases=self.bases, ends=ends, seen=self.seen, committed=committed
        )
        if why is not None:
            await self._recover(driver, why, stop, cluster)
            return
        if cluster is not None and cluster != known:
            await self.journal.set_cluster(driver, cluster)
        self.seen = {g: dict(c) for g, c in committed.items()}
        await self.journal.trim(driver, trim_points(self.retention.readers, committed, sorted(extent)))
        dropped = await self.journal.bound(driver, self.retention.max_rows)
        if dropped:
            DROPPED.labels(journal=self.journal.name).inc(dropped)
            log.warning("replay journal %s: %d records dropped unread (more than %d kept; is every consumer "
                        "group running?)", self.journal.name, dropped, self.retention.max_rows)

    async def _recover(self, driver: Any, why: str, stop: asyncio.Event | None, cluster: str | None) -> None:
        LOSSES.labels(journal=self.journal.name).inc()
        log.warning("relay %s: the broker lost records (%s); publishing again what the consumers had not read%s",
                    self.journal.name, why, f" after {self.retention.settle_s:g} s" if stop is not None else "")
        if stop is not None and self.retention.settle_s > 0:
            await pause(stop, self.retention.settle_s)
            if stop.is_set():
                return  # stopping: the journal still names the old cluster, so the next leader does it
        self.bases, self.seen, self.suspect = {}, {}, None
        total = await self.republish(driver)
        if cluster is not None:
            await self.journal.set_cluster(driver, cluster)
        log.warning("relay %s: %d records published again", self.journal.name, total)

    async def republish(self, driver: Any) -> int:
        """Every kept row, in id order, to the broker again; their new offsets recorded."""
        after, total = 0, 0
        while True:
            pairs = await self.source.replayable(driver, after, _REPLAY_BATCH)
            if not pairs:
                return total
            acks = await self.publisher.publish([record for _id, record in pairs])
            by_topic = [(record.topic, ack) for (_id, record), ack in zip(pairs, acks, strict=True)]
            self._note(by_topic)
            await self.journal.reoffset(driver, [Kept(row_id, record.topic, ack.partition, ack.offset)
                                                 for (row_id, record), ack in zip(pairs, acks, strict=True)])
            REPUBLISHED.labels(journal=self.journal.name).inc(len(pairs))
            after, total = pairs[-1][0], total + len(pairs)


def _is_view(publisher: Publisher) -> bool:
    return all(callable(getattr(publisher, name, None)) for name in ("cluster_id", "end_offsets", "committed"))

