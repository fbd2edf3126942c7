"""`wpc send` with the 92 public samples against a running listener: every message gets its
answer or, under MSH-15 ER / NE, is sent with no ACK expected; nothing waits for an ACK
that never comes (they once took 2 min 31 s: five ER messages waited 30 s each)."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path

from tests.e2e.conftest import StartListener

ROOT = Path(__file__).resolve().parents[2]
SUMMARY = re.compile(
    r"^sent (\d+): AA (\d+), AE (\d+), AR (\d+), duplicates (\d+), no ACK expected (\d+), unanswered (\d+)"
    r"(?:, unreadable ACKs (\d+))?$"
)


def msh15(path: Path) -> str:
    first = path.read_bytes().removeprefix(b"\xef\xbb\xbf").replace(b"\n", b"\r").split(b"\r", 1)[0]
    fields = first.split(first[3:4])
    return fields[14].decode().strip().upper() if len(fields) > 14 else ""


async def test_the_samples_are_answered_or_need_no_answer(start_listener: StartListener, samples_dir: Path) -> None:
    files = sorted((samples_dir / "messages").glob("*.hl7"))
    quiet = {str(f) for f in files if msh15(f) in ("ER", "NE")}
    assert len(files) == 92 and len(quiet) == 11
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("WPC_")}
    async with start_listener() as listener:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "wpc.cli", "send", "--port", str(listener.endpoints.mllp_port),
            "--timeout", "30", *map(str, files),
            cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        out, err = await proc.communicate()
    lines = out.decode().splitlines()
    assert err == b"" and len(lines) == 93, out.decode() + err.decode()
    match = SUMMARY.match(lines[-1])
    assert match is not None, lines[-1]
    sent, aa, ae, ar, _, no_ack, unanswered, unreadable = (int(g or 0) for g in match.groups())
    assert (sent, unanswered, unreadable) == (92, 0, 0)
    assert aa + ae + ar + no_ack == 92
    for line in lines[:-1]:
        name, _, outcome = line.partition("  ->  ")
        label = name.split("  ")[0]
        if label in quiet:
            # Taken: no ACK; refused: its error ACK (enhanced mode answers CE / CR).
            assert outcome.startswith(("sent, no ACK expected (MSH-15 = ", "CE", "CR")), line
        else:
            assert outcome.startswith(("AA", "AE", "AR", "CA", "CE", "CR")), line
    assert no_ack == sum("  ->  sent, no ACK expected" in line for line in lines) > 0
    # Some samples are refused (no PID, an unsupported processing id): exit status 1 says so.
    assert ae + ar > 0 and proc.returncode == 1
