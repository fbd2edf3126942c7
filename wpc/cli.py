"""`wpc`: one console command for every service and tool.

Each sub-command lives in the module named below, which provides
``add_arguments(parser)`` and ``run(args) -> int`` (an exit status). Modules are
imported only when their command is chosen, so `wpc send` never loads the server.

Exit status of every command: 0 done; 1 the command ran and something failed, or this
machine is not ready for it (a port in use, the database unreachable, `wpc up` already
running: `wpc.preflight.StartupError`); 2 a mistake in the command line, a setting
or a configuration file (`services.configfile.ConfigError`). Both errors end here as
one line on stderr (two when more problems hide behind the first), never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

COMMANDS: dict[str, tuple[str, str]] = {
    "up": ("wpc.up", "run the whole system on this machine (embedded PostgreSQL and broker if unset)"),
    "listener": ("wpc.serve", "run the ADT listener (MLLP + HTTP + outbox relay)"),
    "enrollment": ("wpc.serve", "run the enrollment service (adt.events consumer, rules, care team API)"),
    "notifier": ("wpc.serve", "run the notifier (care teams and PCPs: candidates, enrollments, encounters)"),
    "web": ("wpc.serve", "run the care team web app (sign-in, worklists) against the services' APIs"),
    "hash-password": ("wpc.hash_password", "print a password_scrypt value for the users file (web app sign-in)"),
    "load-roster": ("wpc.tools.roster", "load a health plan's PCP attribution roster (CSV) into the database"),
    "replay": ("wpc.tools.replay", "re-fold encounters and re-decide under a rules file (dry run by default)"),
    "redrive": ("wpc.redrive_cmd", "list parked consumer records, or apply them again after a fix"),
    "migrate": ("wpc.migrate_cmd", "apply database migrations and exit"),
    "import": ("wpc.tools.bulk_import", "load ADT history from files (single, batch, MLLP dumps, gzip), resumable"),
    "send": ("wpc.tools.send", "send HL7 files over MLLP and print the ACKs"),
    "demo-traffic": ("wpc.demo_traffic", "send the demo county's synthetic ADT to a running `wpc up` at a chosen rate"),
    "validate": ("wpc.tools.validate", "check HL7 files against their declared version with hl7apy"),
    "feed-report": ("wpc.tools.feed_report", "per-facility feed-quality report from the database"),
    "bench": ("wpc.bench_cmd", "benchmarks: `wpc bench ingest`, `wpc bench enroll`, `wpc bench notify`"),
    "check-config": ("wpc.check_config", "check the settings and every configured file, start nothing"),
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
    from services.configfile import ConfigError
    from wpc.preflight import StartupError

    try:
        status = args._module.run(args)
    except (ConfigError, StartupError) as exc:
        return _refuse(args.command, str(exc), getattr(exc, "problems", ()), exc.exit_status)
    except Exception as exc:
        from pydantic import ValidationError

        from services.settings import is_settings_error, settings_error

        # A command that builds its settings without `load_settings`: the same one line it gives.
        if not (isinstance(exc, ValidationError) and is_settings_error(exc)):
            raise
        error = settings_error(exc)
        return _refuse(args.command, str(error), error.problems, error.exit_status)
    return int(status)


def _refuse(command: str, message: str, problems: Sequence[str], status: int) -> int:
    print(f"wpc {command}: {message}", file=sys.stderr)
    if len(problems) > 1:
        print(f"wpc {command}: `wpc check-config` lists every problem", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
