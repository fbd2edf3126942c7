"""The demo county on the wire: what `wpc up` sends at start in demo mode, and
``wpc demo-traffic``, more of it at a chosen rate to a running `wpc up`.

Both send like a hospital: HL7 v2 over MLLP to the listener, one connection, each message
waiting for its ACK (`wpc.tools.send.MllpClient`). The messages come from
`bench.demo_county` (dated relative to now, lined up with the demo rules and notification
files); the panels of the demo's two clinics are set in the notifier's store first, so the
clinics hear of their patients' visits (`notifier.store.replace_panel`, with an audit row).

``wpc demo-traffic --rate N [--duration S] [--port P]``: N messages a second (default
2) for S seconds (default: until Ctrl-C), to the MLLP port of the `wpc up` running with this
``WPC_DATA_DIR`` (its run.json) unless ``--port`` is given. It prints one line at the end:
sent, accepted (AA/CA), other ACKs. Exit 0 when every message was accepted, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import sys
import time
from collections import Counter
from collections.abc import Iterable

from sqlalchemy.ext.asyncio import AsyncEngine

from bench.demo_county import Scenario, demo_scenario, traffic
from notifier import policy
from notifier import store as notifier_store
from services import audit
from wpc.tools.send import MllpClient

__all__ = ["ack_code", "add_arguments", "feed_demo_county", "run", "send_messages"]

DEMO_ACTOR = "demo-county"  # who set the demo panels, in the audit trail


def ack_code(ack: bytes) -> str:
    """MSA-1 of an ACK (AA, AE, AR, CA, ...), or "" when there is no MSA."""
    for segment in ack.replace(b"\n", b"\r").split(b"\r"):
        if segment.startswith(b"MSA"):
            fields = segment.split(segment[3:4] or b"|")
            return fields[1].decode("ascii", "replace") if len(fields) > 1 else ""
    return ""


async def send_messages(
    host: str, port: int, messages: Iterable[bytes], *, rate: float | None = None, deadline: float | None = None,
    codes: Counter[str] | None = None,
) -> Counter[str]:
    """Send in order, one ACK awaited at a time; at most ``rate`` a second; stop at ``deadline``
    (a `time.monotonic` value). The count of each ACK code, kept in ``codes`` as it goes."""
    codes = Counter() if codes is None else codes
    client = await MllpClient.connect(host, port)
    started = time.monotonic()
    try:
        for n, message in enumerate(messages):
            if deadline is not None and time.monotonic() >= deadline:
                break
            if rate:
                ahead = started + n / rate - time.monotonic()
                if ahead > 0:
                    await asyncio.sleep(ahead)
            codes[ack_code(await client.send(message))] += 1
    finally:
        await client.close()
    return codes


async def set_panels(engine: AsyncEngine, scenario: Scenario) -> None:
    async with engine.begin() as conn:
        for practice, members in scenario.panels.items():
            count = await notifier_store.replace_panel(conn, practice, [policy.medi_cal_key(m) for m in members])
            await audit.record(conn, DEMO_ACTOR, "panel", detail=f"recipient={practice} members={count}")


async def feed_demo_county(engine: AsyncEngine, host: str, port: int, now: dt.datetime) -> Counter[str]:
    """The start of the demo: the clinics' panels, then the county's stories over MLLP.
    The seed is the start time, so every run has people of its own (the database is kept
    between runs, and a person already a candidate would not be proposed again)."""
    scenario = demo_scenario(now, seed=int(now.timestamp()))
    await set_panels(engine, scenario)
    return await send_messages(host, port, scenario.messages)


# --- the command ----------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rate", type=float, default=2.0, help="messages a second (default: %(default)s)")
    parser.add_argument("--duration", type=float, help="seconds to run (default: until Ctrl-C)")
    parser.add_argument("--host", default="127.0.0.1", help="the listener's host (default: %(default)s)")
    parser.add_argument("--port", type=int, help="MLLP port (default: that of the `wpc up` running here)")


def _port(args: argparse.Namespace) -> int:
    if args.port is not None:
        return int(args.port)
    from adt_listener.settings import ListenerSettings
    from services.configfile import ConfigError
    from services.runinfo import read_run_info, run_file
    from services.settings import load_settings

    settings = load_settings(ListenerSettings)
    running = read_run_info(settings.data_dir)
    if running is None or not running.ports.get("mllp"):
        raise ConfigError(f"no running `wpc up` found (looked in {run_file(settings.data_dir)}): start it, "
                          "or give --port")
    print(f"wpc demo-traffic: to the `wpc up` running here (pid {running.pid}), MLLP port {running.ports['mllp']}",
          file=sys.stderr)
    return int(running.ports["mllp"])


def run(args: argparse.Namespace) -> int:
    if not args.rate > 0:
        print("wpc demo-traffic: error: --rate must be positive", file=sys.stderr)
        return 2
    if args.duration is not None and not args.duration > 0:
        print("wpc demo-traffic: error: --duration must be positive", file=sys.stderr)
        return 2
    port = _port(args)
    deadline = time.monotonic() + args.duration if args.duration else None
    seed = int(time.time()) * 10 + 1  # never a start-up scenario's seed (a time in seconds)
    codes: Counter[str] = Counter()
    try:
        asyncio.run(send_messages(args.host, port, traffic(seed, lambda: dt.datetime.now(dt.UTC)),
                                  rate=args.rate, deadline=deadline, codes=codes))
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        print(f"wpc demo-traffic: cannot send to {args.host}:{port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    accepted = codes["AA"] + codes["CA"]
    others = ", ".join(f"{k or 'none'} {v}" for k, v in sorted(codes.items()) if k not in ("AA", "CA")) or "none"
    print(f"sent {sum(codes.values())}, accepted {accepted}, other ACKs: {others}")
    return 0 if accepted == sum(codes.values()) else 1
