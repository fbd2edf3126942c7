"""`wpc`: one console command for every service and tool.

Each sub-command lives in the module named below, which provides
``add_arguments(parser)`` and ``run(args) -> int`` (an exit status). Modules are
imported only when their command is chosen, so `wpc send` never loads the server.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

COMMANDS: dict[str, tuple[str, str]] = {
    "up": ("services.up", "run the whole system on this machine (embedded PostgreSQL and broker if unset)"),
    "listener": ("adt_listener.service", "run the ADT listener (MLLP + HTTP + outbox relay)"),
    "enrollment": ("enrollment_svc.service", "run the enrollment service (adt.events consumer, rules, care team API)"),
    "notifier": ("notifier.service", "run the notifier (care teams and PCPs: candidates, enrollments, encounters)"),
    "load-roster": ("notifier.roster_cmd", "load a health plan's PCP attribution roster (CSV) into the database"),
    "replay": ("enrollment_svc.replay", "re-fold encounters and re-decide under a rules file (dry run by default)"),
    "redrive": ("services.redrive_cmd", "list parked consumer records, or apply them again after a fix"),
    "migrate": ("services.migrate_cmd", "apply database migrations and exit"),
    "send": ("adt_listener.sender", "send HL7 files over MLLP and print the ACKs"),
    "validate": ("adt_listener.conformance", "check HL7 files against their declared version with hl7apy"),
    "feed-report": ("adt_listener.feed_report", "per-facility feed-quality report from the database"),
    "bench": ("services.bench_cmd", "benchmarks: `wpc bench ingest`, `wpc bench enroll`, `wpc bench notify`"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only the chosen command's module is imported (and gets its options)."""
    parser = argparse.ArgumentParser(prog="wpc", description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:
            module = importlib.import_module(module_name)
            module.add_arguments(p)
            p.set_defaults(_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in args_list if not a.startswith("-")), None)
    args = build_parser(command if command in COMMANDS else None).parse_args(args_list)
    status = args._module.run(args)
    return int(status)


if __name__ == "__main__":
    sys.exit(main())
