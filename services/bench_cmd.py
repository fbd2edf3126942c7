"""`wpc bench ingest` (adt_listener.bench), `wpc bench enroll` (enrollment_svc.bench) and
`wpc bench notify` (notifier.bench)."""

from __future__ import annotations

import argparse

from adt_listener import bench as ingest_bench
from enrollment_svc import bench as enroll_bench
from notifier import bench as notify_bench


def add_arguments(parser: argparse.ArgumentParser) -> None:
    ingest_bench.add_arguments(parser)  # adds the BENCH sub-commands with "ingest"
    # argparse offers no public way to reach a parser's sub-command action once made.
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    enroll_bench.add_arguments(sub.add_parser("enroll", help="enrollment decisions on a loaded synthetic county"))
    notify_bench.add_arguments(sub.add_parser("notify", help="notifications/s and event -> delivered latency"))


def run(args: argparse.Namespace) -> int:
    if args.bench == "enroll":
        return enroll_bench.run(args)
    if args.bench == "notify":
        return notify_bench.run(args)
    return ingest_bench.run(args)
