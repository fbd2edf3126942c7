"""`wpc validate FILE...`: the hl7apy conformance check of files, as the listener's worker
makes it on stored messages (`adt_listener.conformance.check_message`).

Each message of each file gets one line (its MSH-9 and MSH-12, how many findings) and a
line per finding; the summary counts findings by kind. Exit status 1 when any message
has a finding, so an integration engineer can gate a feed's test files on it.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from adt_listener.conformance import check_message
from adt_listener.er7 import split_messages, text_of


def _msh_summary(raw: bytes) -> tuple[str, str]:
    """(MSH-12 version, MSH-9 type^trigger), read without hl7apy; '?' when absent."""
    msh = text_of(raw).split("\r", 1)[0]
    if len(msh) < 8 or not msh.startswith("MSH"):
        return "?", "?"
    fields = msh.split(msh[3])
    component = msh[4] if len(msh) > 4 else "^"
    version = fields[11].split(component)[0] if len(fields) > 11 and fields[11] else "?"
    kind = "^".join(fields[8].split(component)[:2]) if len(fields) > 8 and fields[8] else "?"
    return version, kind


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", type=Path, metavar="FILE", help="files of ER7 messages")
    parser.add_argument(
        "--charset", default=None, help="decode with this charset (default: UTF-8, then cp1252)"
    )


def run(args: argparse.Namespace) -> int:
    kinds: Counter[str] = Counter()
    total = with_findings = 0
    for path in args.files:
        for index, raw in enumerate(split_messages(path.read_bytes()), start=1):
            total += 1
            version, kind = _msh_summary(raw)
            findings = check_message(raw, charset=args.charset)
            print(f"{path}#{index}: {kind} v{version}: {len(findings)} finding(s)")
            for f in findings:
                print(f"  {f.kind:<20} {f.location or '-':<12} {f.detail}")
            if findings:
                with_findings += 1
                kinds.update(f.kind for f in findings)
    summary = ", ".join(f"{k} {n}" for k, n in kinds.most_common()) or "none"
    print(f"{total} message(s), {with_findings} with findings; findings by kind: {summary}")
    return 1 if with_findings else 0
