"""`wpc bench ingest` (bench.ingest), `wpc bench enroll` (bench.enroll),
`wpc bench notify` (bench.notify), `wpc bench import` (bench.bulk) and `wpc bench pipeline`
(bench.pipeline)."""

from __future__ import annotations

import argparse

from bench import bulk as import_bench
from bench import enroll as enroll_bench
from bench import ingest as ingest_bench
from bench import notify as notify_bench
from bench import pipeline as pipeline_bench


def add_arguments(parser: argparse.ArgumentParser) -> None:
    ingest_bench.add_arguments(parser)  # adds the BENCH sub-commands with "ingest"
    # argparse offers no public way to reach a parser's sub-command action once made.
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    enroll_bench.add_arguments(sub.add_parser("enroll", help="enrollment decisions on a loaded synthetic county"))
    notify_bench.add_arguments(sub.add_parser("notify", help="notifications/s and event -> delivered latency"))
    import_bench.add_arguments(sub.add_parser("import", help="`wpc import` of a synthetic archive"))
    pipeline_bench.add_arguments(sub.add_parser(
        "pipeline", help="the whole system under background ADT: MLLP -> care team webhook latency, CPU per event"))


def run(args: argparse.Namespace) -> int:
    if args.bench == "enroll":
        return enroll_bench.run(args)
    if args.bench == "notify":
        return notify_bench.run(args)
    if args.bench == "import":
        return import_bench.run(args)
    if args.bench == "pipeline":
        return pipeline_bench.run(args)
    return ingest_bench.run(args)
