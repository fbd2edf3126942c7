"""Feed conformance: check stored ADT messages against their declared HL7 version with hl7apy.

hl7apy costs ~13 ms per ADT, so it never runs on the ACK path. The listener stores every
message and sets ``conformance_checked = false`` on the rows the sender's mode selects
(`sample_selected`); `ConformanceWorker` checks those rows later, in a separate process, and
writes one ``conformance_finding`` row per problem. `check_message` is the pure core.

Why a tolerant parse followed by the validator, rather than a STRICT parse: a STRICT parse
stops at the first problem, often without saying where ("Cannot instantiate an unknown
Element"), while hl7apy's `Validator` walks the whole tree and collects every cardinality,
datatype, table and length problem. It hands the complete list out only through a report
file, so that file lives in anonymous memory (memfd) and never on disk: table warnings quote
the offending value, which may be a patient's name.

hl7apy's texts are translated here, once, into `ConformanceFinding` (kind, location, detail);
values are dropped, only element names survive (``PID.PID_8`` becomes location ``PID-8``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import math
import multiprocessing
import os
import re
import signal
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, Literal

from prometheus_client import Gauge
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from adt_listener.er7 import text_of
from services import lifecycle
from services.reaper import die_with_parent

log = logging.getLogger(__name__)

FindingKind = Literal[
    "unparseable",  # no message hl7apy can read: no MSH first, bad MSH-2, garbage
    "unsupported_version",  # MSH-12 absent or not an HL7 v2 version: checked against DEFAULT_VERSION
    "version",  # declared version hl7apy lacks: checked against the nearest one it has
    "structure",  # segment order, groups, cardinality, elements not defined by the version
    "required",  # a required field or component is empty
    "datatype",  # the element does not have the structure of its datatype
    "table",  # coded value not in the HL7 table of the element
    "length",  # value longer than the element's maximum length
    "validator_error",  # hl7apy itself failed on this input (a library defect, not a verdict)
]


@dataclass(frozen=True, slots=True)
class ConformanceFinding:
    """One problem of one message. ``location`` names an element (``PID-8``, ``MSH-9.3``,
    ``PV1``); ``detail`` says what is wrong with it. Neither ever holds a field value."""

    kind: str
    location: str | None
    detail: str


# hl7apy's own default; used when MSH-12 gives nothing usable.
DEFAULT_VERSION = "2.5"

# HL7 Table 0354 (message structure), ADT part: the structures of each trigger event, newest
# first, for messages whose MSH-9 lacks component 3 (optional before v2.3.1, often omitted
# after) or names one the version does not define. v2.3 and v2.3.1 use ADT_A01 for A05, A14,
# A28 and A31 (ADT_A05 came with v2.4) and ADT_A09 for the A21 family; v2.1 and v2.2 define
# one structure per event, which hl7apy has as ADT_Ann and `_structure_for` tries first.
_ADT_STRUCTURES: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(("A01", "A04", "A08", "A13"), ("ADT_A01",)),
    **dict.fromkeys(("A05", "A14", "A28", "A31"), ("ADT_A05", "ADT_A01")),
    **dict.fromkeys(("A06", "A07"), ("ADT_A06",)),
    **dict.fromkeys(("A09", "A10", "A11"), ("ADT_A09",)),
    "A12": ("ADT_A12", "ADT_A09"),
    "A15": ("ADT_A15", "ADT_A09"),
    **dict.fromkeys(("A21", "A22", "A23", "A25", "A26", "A27", "A29", "A32", "A33"), ("ADT_A21", "ADT_A09")),
    **dict.fromkeys(("A30", "A34", "A35", "A36", "A46", "A47", "A48", "A49"), ("ADT_A30",)),
    **dict.fromkeys(("A39", "A40", "A41", "A42"), ("ADT_A39",)),
    **dict.fromkeys(("A43", "A44"), ("ADT_A43",)),
    **dict.fromkeys(("A50", "A51"), ("ADT_A50",)),
    **dict.fromkeys(("A52", "A53", "A55"), ("ADT_A52",)),
    **dict.fromkeys(("A61", "A62"), ("ADT_A61",)),
}

_VERSION_RE = re.compile(r"2(\.\d+){1,2}")
_SEGMENT_RE = re.compile(r"[A-Z][A-Z0-9]{2}")
_NUMBERED_RE = re.compile(r"([A-Z][A-Z0-9]{1,2})_(\d+)")
_ELEMENT_REPR_RE = re.compile(r"<(Message|Group|Segment|Field|Component|SubComponent)(?: ([A-Z0-9_]+))?")


# --- the check ---------------------------------------------------------------------------


def check_message(raw: bytes, *, charset: str | None = None) -> list[ConformanceFinding]:
    """Check one message against the structures of its declared MSH-12 version.

    Pure (no I/O besides an anonymous in-memory report file) and total: every hl7apy failure
    becomes a finding, nothing is raised for any input.
    """
    from hl7apy import SUPPORTED_LIBRARIES
    from hl7apy.exceptions import HL7apyException, InvalidEncodingChars, ParserError
    from hl7apy.parser import get_message_info

    er7 = text_of(raw, charset).strip()  # decoded as the listener decodes (adt_listener.er7)
    findings: list[ConformanceFinding] = []
    try:
        encoding_chars, _structure, declared = get_message_info(er7)
    except InvalidEncodingChars:
        return [ConformanceFinding("unparseable", "MSH-2", "invalid encoding characters")]
    except (ParserError, HL7apyException, IndexError, ValueError):
        return [ConformanceFinding("unparseable", None, "message does not start with a readable MSH segment")]

    version = _resolve_version(declared, sorted(SUPPORTED_LIBRARIES, key=_version_key))
    if version != declared:
        if declared and _VERSION_RE.fullmatch(declared):
            findings.append(
                ConformanceFinding(
                    "version", "MSH-12", f"{declared} not known to hl7apy; checked against {version}"
                )
            )
        else:
            findings.append(
                ConformanceFinding(
                    "unsupported_version",
                    "MSH-12",
                    f"absent or not an HL7 v2 version; checked against {version}",
                )
            )
    try:
        findings.extend(_validate(er7, encoding_chars, version))
    except HL7apyException as exc:
        findings.append(ConformanceFinding("unparseable", None, _describe_parse_error(exc)))
    except Exception as exc:  # hl7apy has defects (AttributeError, KeyError) on odd input
        findings.append(ConformanceFinding("validator_error", None, f"hl7apy failed: {type(exc).__name__}"))
    # One finding per (kind, location, detail): a problem in every repetition of PID-3 is one
    # problem of the feed, and the report counts messages, not repetitions.
    return list(dict.fromkeys(findings))


def _version_key(v: str) -> tuple[int, ...]:
    return tuple(int(p) for p in v.split("."))


def _resolve_version(declared: str | None, supported: Sequence[str]) -> str:
    """The declared version, or the newest supported one not after it (else the oldest)."""
    if not declared or not _VERSION_RE.fullmatch(declared):
        return DEFAULT_VERSION
    if declared in supported:
        return declared
    wanted = _version_key(declared)
    older = [v for v in supported if _version_key(v) <= wanted]
    return older[-1] if older else supported[0]


def _msh9(er7: str, encoding_chars: dict[str, str]) -> list[str]:
    """MSH-9 components (message code, trigger event, structure), stripped."""
    fields = er7.split("\r", 1)[0].split(encoding_chars["FIELD"])
    if len(fields) <= 8:
        return []
    return [c.strip() for c in fields[8].split(encoding_chars["COMPONENT"])]


def _structure_for(msh9: list[str], version: str) -> str | None:
    """The message structure to validate against, or None when the version has none.

    MSH-9.3 when the version defines it, else the structure of the trigger event (HL7 Table
    0354); hl7apy itself only tries MSH-9.3 and then ``code_trigger``.
    """
    from hl7apy import load_library

    messages: dict[str, Any] = load_library(version).MESSAGES
    code, trigger, declared = [*msh9, "", "", ""][:3]
    candidates = [declared, f"{code}_{trigger}"]
    if code == "ADT":
        candidates.extend(_ADT_STRUCTURES.get(trigger, ()))
    return next((c for c in candidates if c and c in messages), None)


def _validate(er7: str, encoding_chars: dict[str, str], version: str) -> list[ConformanceFinding]:
    from hl7apy.consts import VALIDATION_LEVEL
    from hl7apy.core import Message
    from hl7apy.exceptions import ValidationError
    from hl7apy.parser import parse_segments
    from hl7apy.validation import Validator

    findings: list[ConformanceFinding] = []
    msh9 = _msh9(er7, encoding_chars)
    known = _structure_for(msh9, version)
    if known is not None and len(msh9) > 2 and msh9[2] and msh9[2] != known:
        findings.append(ConformanceFinding("structure", "MSH-9.3", f"structure not defined in HL7 {version}"))
    # TOLERANT builds the whole tree even around problems; the validator then reports them all.
    level = VALIDATION_LEVEL.TOLERANT
    if known is None:
        findings.append(
            ConformanceFinding("structure", "MSH-9", f"message type has no structure in HL7 {version}")
        )
        segments = parse_segments(er7, version, encoding_chars, level, find_groups=False)
        targets: list[Any] = list(segments)
    else:
        message = Message(name=known, version=version, validation_level=level, encoding_chars=encoding_chars)
        message.children = parse_segments(er7, version, encoding_chars, level, message.reference, True)
        targets = [message]

    segment_ids = frozenset(_segment_ids(version))
    for target in targets:
        if known is None and target.is_z_element():
            continue
        with _memory_report() as report:
            try:
                Validator.validate(
                    target, reference=getattr(target, "reference", None), report_file=report.path
                )
            except ValidationError:
                pass  # the report holds this error and every other one
            lines = report.read()
        findings.extend(_translate(line, segment_ids) for line in lines)
    return findings


def _segment_ids(version: str) -> Iterator[str]:
    from hl7apy import load_library

    segments: dict[str, Any] = load_library(version).SEGMENTS
    return iter(segments)


# --- the validator's report, kept in memory ------------------------------------------------


class _Report:
    def __init__(self, path: str) -> None:
        self.path = path

    def read(self) -> list[str]:
        try:
            with open(self.path, encoding="utf-8", errors="replace") as f:
                return [line for line in f.read().splitlines() if line.strip()]
        except FileNotFoundError:  # the validator failed before writing
            return []


@contextlib.contextmanager
def _memory_report() -> Iterator[_Report]:
    """A path the validator can open for writing, backed by memory where the OS allows it."""
    memfd_create = getattr(os, "memfd_create", None)
    if memfd_create is not None:
        fd = memfd_create("wpc-conformance")
        try:
            yield _Report(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
        return
    # Not Linux (a developer's laptop): a private temporary directory, removed at once.
    with tempfile.TemporaryDirectory(prefix="wpc-conf-") as d:
        yield _Report(os.path.join(d, "report"))


# --- translation of hl7apy's texts into findings -------------------------------------------

_RULES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"Error: Missing required child (?P<parent>\S+)\.(?P<child>\S+)$"), "missing"),
    (re.compile(r"Error: Child limit exceeded (?P<parent>\S+)\.(?P<child>\S+)$"), "limit"),
    (
        re.compile(r"Error: Datatype \S+ is not correct for (?P<parent>\S+)\.(?P<child>\S+) \(it must be"),
        "datatype",
    ),
    (re.compile(r"Error: Invalid children detected for (?P<repr><[^>]*>)"), "invalid_children"),
    (re.compile(r"Error: Unknown element found: (?P<repr><[^>]*>)"), "unknown"),
    (re.compile(r"Error: Invalid element found: (?P<repr><[^>]*>)"), "unknown"),
    # The value comes first and may hold anything; anchor on the end of the line.
    (
        re.compile(
            r"Warning: Value .* not in table (?P<table>\S+) in element (?P<parent>\S+)\.(?P<child>\S+)$"
        ),
        "table",
    ),
    (
        re.compile(r"Warning: Exceeded max length \((?P<max>\d+)\) of (?P<parent>\S+)\.(?P<child>\S+)$"),
        "length",
    ),
]


def _translate(line: str, segment_ids: frozenset[str]) -> ConformanceFinding:
    for pattern, rule in _RULES:
        m = pattern.match(line)
        if m is None:
            continue
        groups = m.groupdict()
        if "repr" in groups:
            location = _location_of_repr(groups["repr"], segment_ids)
            if rule == "unknown":
                return ConformanceFinding("structure", location, "element not defined in this version")
            return ConformanceFinding("structure", location, "holds elements not defined in this version")
        parent, child = groups["parent"], groups["child"]
        location = _location(parent, child, segment_ids)
        child_is_segment = _SEGMENT_RE.fullmatch(child) is not None or (
            "_" in child and _NUMBERED_RE.fullmatch(child) is None
        )
        if rule == "missing":
            if child_is_segment:
                return ConformanceFinding(
                    "structure", location, f"required segment or group missing in {parent}"
                )
            return ConformanceFinding("required", location, "required element empty")
        if rule == "limit":
            what = "segment or group" if child_is_segment else "element"
            return ConformanceFinding("structure", location, f"{what} repeats more often than allowed")
        if rule == "datatype":
            return ConformanceFinding("datatype", location, "does not have the structure of its datatype")
        if rule == "table":
            return ConformanceFinding("table", location, f"value not in table {groups['table']}")
        return ConformanceFinding("length", location, f"value longer than {groups['max']}")
    # Unknown wording (a new hl7apy release): keep nothing of the text, it may hold values.
    return ConformanceFinding("validator_error", None, "unrecognised validator message")


def _location(parent: str, child: str, segment_ids: frozenset[str]) -> str:
    """``PID``+``PID_8`` → ``PID-8``; ``MSH_9``+``MSG_3`` → ``MSH-9.3``; ``ADT_A01``+``PV1`` → ``PV1``."""
    c = _NUMBERED_RE.fullmatch(child)
    if c is None:  # a segment or group
        return child
    if parent in segment_ids:
        return f"{parent}-{c.group(2)}"
    p = _NUMBERED_RE.fullmatch(parent)
    if p is not None and p.group(1) in segment_ids:  # component of a field
        return f"{p.group(1)}-{p.group(2)}.{c.group(2)}"
    if p is not None:  # subcomponent: hl7apy names only the datatype of the component
        return f"{p.group(1)}.{p.group(2)}.{c.group(2)}"
    return child


def _location_of_repr(element: str, segment_ids: frozenset[str]) -> str | None:
    m = _ELEMENT_REPR_RE.match(element)
    if m is None or m.group(2) is None:
        return None
    name = m.group(2)
    n = _NUMBERED_RE.fullmatch(name)
    if n is not None and n.group(1) in segment_ids:
        return f"{n.group(1)}-{n.group(2)}"
    return name


def _describe_parse_error(exc: Exception) -> str:
    """A fixed text per hl7apy exception: their messages may quote the input."""
    from hl7apy.exceptions import (
        InvalidEncodingChars,
        InvalidName,
        MaxChildLimitReached,
        ParserError,
        UnsupportedVersion,
    )

    if isinstance(exc, InvalidEncodingChars):
        return "invalid encoding characters in MSH-2"
    if isinstance(exc, InvalidName):
        return "segment or element name not valid"
    if isinstance(exc, MaxChildLimitReached):
        return "more children than the structure allows"
    if isinstance(exc, UnsupportedVersion):
        return "version not supported"
    if isinstance(exc, ParserError):
        return "not an ER7 message"
    return f"hl7apy rejected the message ({type(exc).__name__})"


# --- sampling (used by the listener) -------------------------------------------------------


def sample_selected(mode: Literal["off", "sampled", "all"], rate: float, message_id: uuid.UUID) -> bool:
    """Whether the message is checked, decided from its id alone.

    A hash of the id rather than a random draw: the same message id always gets the same
    answer, in every process and after restarts. blake2b rather than the id's own bits
    because time-ordered ids (UUIDv7) are not uniform in their high bits.
    """
    if mode == "off":
        return False
    if mode == "all":
        return True
    if mode != "sampled":
        raise ValueError(f"unknown validation mode {mode!r}")
    if math.isnan(rate) or not 0.0 <= rate <= 1.0:
        raise ValueError("sample rate must be within 0..1")
    draw = int.from_bytes(hashlib.blake2b(message_id.bytes, digest_size=8).digest(), "big")
    return draw < rate * 2**64


# --- the worker ---------------------------------------------------------------------------

CONFORMANCE_PROCESS = "wpc-conformance"  # the worker's process name (ps, top)


def _worker_init(listener_pid: int) -> None:
    """The checking process: low priority, and deaf to Ctrl-C. A terminal's Ctrl-C goes to the
    whole process group; the service drains on it and then shuts this pool down, which a
    KeyboardInterrupt in the middle of an hl7apy parse would only turn into a traceback.
    And gone with the listener: one killed without its drain (SIGKILL, out of memory) cannot
    shut the pool down, and the worker (with multiprocessing's resource tracker, which
    waits for it) would idle on forever."""
    os.nice(10)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent(listener_pid, CONFORMANCE_PROCESS)


def _check_batch(items: list[tuple[bytes, str | None]]) -> tuple[list[list[ConformanceFinding]], float]:
    """Runs in the pool process: one round trip per batch instead of one per message.
    Returns the findings and the CPU seconds the checks took (the worker's budget)."""
    started = time.process_time()
    found = [check_message(raw, charset=charset) for raw, charset in items]
    return found, time.process_time() - started


def pause_after(
    checked: int, *, batch: int, elapsed_s: float, cpu_s: float, interval_s: float, max_per_s: float,
    cpu_share: float,
) -> float:
    """Seconds to wait before the next round, after one that checked ``checked`` messages in
    ``elapsed_s`` seconds using ``cpu_s`` seconds of the checking process's CPU.

    At once while there is a backlog (a full batch), else after ``interval_s``; never more
    than ``max_per_s`` checks a second, and never more than ``cpu_share`` of one CPU. The
    second bound is the one that holds on any host: a check costs ~13 ms on a fast one and
    ~40 ms on a slow or busy one, and a cap in checks alone would let it take three times the
    CPU there, which the services taking messages in and deciding them need."""
    delay = 0.0 if checked >= batch else interval_s
    return max(delay, checked / max_per_s - elapsed_s, cpu_s / cpu_share - elapsed_s)


# What the caps leave waiting: under a sustained burst the sample grows faster than 5 % of a
# CPU checks it, and the backlog is worked off in quieter hours; ops see how far behind it is.
BACKLOG = Gauge("wpc_conformance_backlog", "Stored messages selected for an hl7apy check and not yet checked")
_BACKLOG_EVERY_S = 10.0
_COUNT_BACKLOG = text("SELECT count(*) FROM adt_message WHERE NOT conformance_checked")  # a partial index's size

_CLAIM = text(
    """
    SELECT id, sending_facility, hl7_version, trigger_event, raw, charset
    FROM adt_message
    WHERE NOT conformance_checked
    ORDER BY received_at
    LIMIT :batch
    FOR UPDATE SKIP LOCKED
    """
)
_INSERT_FINDING = text(
    """
    INSERT INTO conformance_finding
        (message_id, sending_facility, hl7_version, trigger_event, kind, location, detail)
    VALUES (:message_id, :sending_facility, :hl7_version, :trigger_event, :kind, :location, :detail)
    """
)
_MARK_CHECKED = text(
    "UPDATE adt_message SET conformance_checked = true, conformance_checked_at = now() WHERE id = ANY(:ids)"
)


class ConformanceWorker:
    """Checks the rows the listener selected, in batches, off the event loop.

    Rows are claimed with ``FOR UPDATE SKIP LOCKED`` inside the transaction that writes their
    findings and marks them checked, so several replicas share the work and a crash leaves
    the rows unchecked for the next attempt. hl7apy runs in a one-process pool (it is CPU
    bound and holds the GIL); the process is started with *spawn*, because forking a process
    that holds an event loop and database sockets copies both.
    """

    def __init__(
        self, engine: AsyncEngine, *, batch: int = 5, interval_s: float = 1.0, max_per_s: float = 5.0,
        cpu_share: float = 0.05,
    ) -> None:
        if batch < 1:
            raise ValueError("batch must be at least 1")
        if not 0.0 < cpu_share <= 1.0:
            raise ValueError("cpu_share must be within (0, 1]")
        self._engine = engine
        self._batch = batch
        self._interval_s = interval_s
        # hl7apy costs ~30 ms a message: unbounded, a sampled busy feed would take a whole core
        # from ingestion. The cap keeps checking a background chore; a backlog waits for quiet hours.
        self._max_per_s = max_per_s
        self._cpu_share = cpu_share
        self._cpu_s = 0.0  # CPU seconds of the last round's checks
        self._counted_at = -_BACKLOG_EVERY_S
        self._pool: ProcessPoolExecutor | None = None

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            # Niced, and fed small batches: its CPU comes in short slices of low priority, so a
            # backlog of checks never delays an ACK (measured: open-loop p99 38 → 15 ms).
            self._pool = ProcessPoolExecutor(
                max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                initializer=_worker_init, initargs=(os.getpid(),),
            )
        return self._pool

    async def run_once(self) -> int:
        """Check up to ``batch`` waiting messages; return how many were checked. Counts the
        backlog (`BACKLOG`) at most every ten seconds."""
        loop = asyncio.get_running_loop()
        self._cpu_s = 0.0
        if time.monotonic() - self._counted_at >= _BACKLOG_EVERY_S:
            async with self._engine.connect() as conn:
                BACKLOG.set((await conn.execute(_COUNT_BACKLOG)).scalar_one())
            self._counted_at = time.monotonic()
        async with self._engine.begin() as conn:
            rows = (await conn.execute(_CLAIM, {"batch": self._batch})).all()
            if not rows:
                return 0
            items = [(bytes(r.raw), r.charset) for r in rows]
            try:
                results, self._cpu_s = await loop.run_in_executor(
                    self._executor(), functools.partial(_check_batch, items))
            except BrokenProcessPool:
                # The pool process died (OOM, a crash inside a C extension): start a new one next time.
                self._pool = None
                raise
            params = [
                {
                    "message_id": r.id,
                    "sending_facility": r.sending_facility,
                    "hl7_version": r.hl7_version,
                    "trigger_event": r.trigger_event,
                    "kind": f.kind,
                    "location": f.location,
                    "detail": f.detail,
                }
                for r, found in zip(rows, results, strict=True)
                for f in found
            ]
            if params:
                await conn.execute(_INSERT_FINDING, params)
            await conn.execute(_MARK_CHECKED, {"ids": [r.id for r in rows]})
        log.debug("conformance: checked %d messages, %d findings", len(rows), len(params))
        return len(rows)

    async def run(self, stop: asyncio.Event) -> None:
        """Work until ``stop`` is set: at once while there is a backlog, else every interval.

        A failed round (database down, pool crashed) is logged by exception type only, and
        retried after a backoff that doubles up to a minute (`services.lifecycle.repeat`).
        """

        async def round_() -> float:
            started = time.monotonic()
            checked = await self.run_once()
            return pause_after(checked, batch=self._batch, elapsed_s=time.monotonic() - started, cpu_s=self._cpu_s,
                               interval_s=self._interval_s, max_per_s=self._max_per_s, cpu_share=self._cpu_share)

        await lifecycle.repeat(stop, round_, what="conformance round",
                               backoff=lifecycle.Backoff(max(self._interval_s, 0.1), 60.0))

    def close(self) -> None:
        """Shut the pool process down (waits for a running check to finish)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    async def aclose(self) -> None:
        """`close` off the event loop: the wait for a check in hand must not stall the loop
        (nor the drain's deadline and a second Ctrl-C, which it serves)."""
        await asyncio.to_thread(self.close)

