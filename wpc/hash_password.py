"""`wpc hash-password`: a ``password_scrypt`` value for the users file (services/auth.py).

The password is read without echo from the terminal, or as one line from standard input
(``printf %s "$pw" | wpc hash-password``), never from the command line (it would stay in
the shell's history and in the process list).
"""

from __future__ import annotations

import argparse
import getpass
import sys

from services.auth import hash_password
from services.configfile import ConfigError

MIN_LENGTH = 8


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--allow-short", action="store_true", help=f"accept a password under {MIN_LENGTH} characters")


def run(args: argparse.Namespace) -> int:
    if sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            raise ConfigError("the two passwords differ")
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        raise ConfigError("no password given (type one, or send one line on standard input)")
    if len(password) < MIN_LENGTH and not args.allow_short:
        raise ConfigError(f"the password is shorter than {MIN_LENGTH} characters (--allow-short accepts it)")
    print(hash_password(password))
    return 0
