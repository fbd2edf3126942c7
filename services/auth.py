"""Who may call the services' APIs (enrollment, notifier): bearer tokens from a users file, roles per program.

``WPC_USERS_FILE`` is a YAML list; tokens are stored as SHA-256 digests only::

    - name: maria.lopez            # recorded in the audit trail as the actor
      token_sha256: 5e88...        # sha256 of the bearer token, hex (for API calls)
      password_scrypt: scrypt$16384$8$1$<salt>$<key>   # for the web app's sign-in
      roles: [care_team:TOC, care_team:SUD-ENS]

An entry has a token, a password or both. ``password_scrypt`` is
``scrypt$<N>$<r>$<p>$<salt>$<key>``: hashlib.scrypt's cost parameters, then the salt and
the 32-byte derived key, each URL-safe base64 without padding; `wpc hash-password`
prints one (`hash_password`). Only the web app reads it (`Users.sign_in`).

Roles:

* ``care_team:<PROGRAM>`` (``care_team:*`` for all programs): read and act on that
  program's candidates; record and revoke a person's 42 CFR Part 2 consent when the
  person is a candidate or enrollee of that program (`may_handle_consent`): a TOC team
  has no say over the consent of someone who is only a SUD-ENS candidate.
* ``partner``: post flags from a partner system (housing, probation, children and
  family services); load a health plan's PCP roster or a practice's panel.
* ``webapp``: the web app itself (`webapp/`). Alone it may read and do nothing; it names
  the person signed in to it in the header ``X-WPC-Acting-User`` and the request is then
  that user's: authorised by their roles and audited under their name, marked as having
  come through the web app (`User.audit_actor`). Only a ``webapp`` principal may send the
  header; from anyone else it is refused (403), so every access rule stays here.
* ``ops``: identity links and unlinks (ops only: a wrong link merges two people's
  histories, so it is not a care team's call), measures, every program's candidates
  read-only, Part 2 consents of anyone, notification failures and re-sends, rosters and
  panels.

A request without a valid token gets 401, a role it lacks 403 with the reason.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import secrets
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from fastapi import HTTPException, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from schemas.enrollment import PROGRAMS
from services.configfile import ConfigError, read_yaml, validate

ACTING_USER_HEADER = "X-WPC-Acting-User"
WEBAPP_ROLE = "webapp"


@dataclass(frozen=True)
class User:
    name: str
    roles: frozenset[str]
    # The principal the request came through when it acts for this user (the web app's
    # name), else empty.
    via: str = ""

    @property
    def audit_actor(self) -> str:
        """The ``actor`` of this user's audit rows: the name, and the web app when it came through it."""
        return f"{self.name} via {self.via}" if self.via else self.name

    def programs(self, *, write: bool = False) -> frozenset[str]:
        """Programs whose candidates this user may read (or, with write, act on)."""
        if "care_team:*" in self.roles or (not write and "ops" in self.roles):
            return frozenset(PROGRAMS)
        return frozenset(r.split(":", 1)[1] for r in self.roles if r.startswith("care_team:"))

    def has(self, role: str) -> bool:
        return role in self.roles

    def on_team_of(self, programs: Collection[str]) -> bool:
        """Whether the user is on the care team of one of ``programs``."""
        return not self.programs(write=True).isdisjoint(programs)


def may_handle_consent(user: User, person_programs: Collection[str]) -> bool:
    """Whether ``user`` may record or revoke a Part 2 consent of a person who is a
    candidate or enrollee of ``person_programs`` now: ops, or the care team of one of them.

    Why not any care team: a consent lifts the Part 2 redaction of the person's SUD
    information, so it is the business of the team that works with the person (and
    knows of the signed form), not of a program that has never seen them.
    """
    return user.has("ops") or user.on_team_of(person_programs)


# hashlib.scrypt's cost: N=2^14, r=8 (16 MiB, some 50 ms a try), p=1; the stored string
# carries them, so a later, dearer choice keeps old hashes valid.
_SCRYPT_N, _SCRYPT_R, _SCRYPT_P, _SCRYPT_LEN = 2**14, 8, 1, 32


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """A ``password_scrypt`` value for ``password`` (a fresh random salt unless given)."""
    salt = salt if salt is not None else secrets.token_bytes(16)
    key = hashlib.scrypt(password.encode(), salt=salt, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P,
                         maxmem=64 * 1024 * 1024, dklen=_SCRYPT_LEN)
    return f"scrypt${_SCRYPT_N}${_SCRYPT_R}${_SCRYPT_P}${_b64(salt)}${_b64(key)}"


def _parse_scrypt(stored: str) -> tuple[int, int, int, bytes, bytes]:
    """The parts of a ``password_scrypt`` value; ValueError naming what is wrong."""
    parts = stored.split("$")
    if len(parts) != 6 or parts[0] != "scrypt":
        raise ValueError("not scrypt$N$r$p$salt$key (make one with `wpc hash-password`)")
    try:
        n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
        salt, key = _unb64(parts[4]), _unb64(parts[5])
    except ValueError as exc:
        raise ValueError("not scrypt$N$r$p$salt$key (make one with `wpc hash-password`)") from exc
    if n < 2 or n & (n - 1) or not 1 <= r <= 64 or not 1 <= p <= 16 or n * r > 2**22 or not salt or not key:
        raise ValueError("scrypt cost out of range (N a power of two, r 1-64, p 1-16)")
    return n, r, p, salt, key


def verify_password(password: str, stored: str) -> bool:
    """Whether ``password`` is the one ``stored`` (a valid ``password_scrypt``) was made of."""
    n, r, p, salt, key = _parse_scrypt(stored)
    tried = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, maxmem=256 * 1024 * 1024, dklen=len(key))
    return hmac.compare_digest(tried, key)


class Users:
    """The users file: tokens (SHA-256) for the APIs, scrypt passwords for the web app."""

    def __init__(self, entries: Mapping[str, User], passwords: Mapping[str, str] | None = None,
                 people: Collection[User] = ()) -> None:
        """``entries``: token digest -> user; ``passwords``: user name -> ``password_scrypt``;
        ``people``: users with no token (web app sign-in only)."""
        self._by_digest = dict(entries)
        self._passwords = dict(passwords or {})
        self._by_name = {u.name: u for u in (*people, *entries.values())}

    def authenticate(self, token: str) -> User | None:
        digest = hashlib.sha256(token.encode()).hexdigest()
        for known, user in self._by_digest.items():
            if hmac.compare_digest(known, digest):
                return user
        return None

    def named(self, name: str) -> User | None:
        return self._by_name.get(name)

    def sign_in(self, name: str, password: str) -> User | None:
        """The user ``name`` if ``password`` is theirs; None otherwise (also for no such
        user, after the same work, so the answer's time does not tell which)."""
        stored = self._passwords.get(name)
        user = self._by_name.get(name)
        if stored is None or user is None:
            verify_password(password, _decoy())
            return None
        return user if verify_password(password, stored) else None

    def with_webapp(self, token: str, name: str = "webapp") -> Users:
        """These users and the web app's principal (role ``webapp``) with ``token``."""
        entries = {**self._by_digest, hashlib.sha256(token.encode()).hexdigest(): User(name, frozenset({WEBAPP_ROLE}))}
        return Users(entries, self._passwords, self._by_name.values())

    @classmethod
    def single(cls, token: str, name: str, roles: frozenset[str]) -> Users:
        return cls({hashlib.sha256(token.encode()).hexdigest(): User(name, roles)})

    @classmethod
    def demo(cls, token: str, webapp_token: str, password: str = "demo") -> Users:
        """`wpc up` without a users file: one API user with every role (``demo``, ``token``),
        the web app's principal, and the demo people of the web app, each with ``password``."""
        hashed = hash_password(password)
        people = [User(name, frozenset(roles)) for name, roles in DEMO_PEOPLE.items()]
        return cls({hashlib.sha256(token.encode()).hexdigest(): User("demo", frozenset({"ops", "partner",
                                                                                        "care_team:*"}))},
                   {u.name: hashed for u in people}, people).with_webapp(webapp_token)


# The web app's demo sign-ins (`wpc up` with no WPC_USERS_FILE), each with password "demo".
DEMO_PEOPLE: Mapping[str, tuple[str, ...]] = {
    "toc": ("care_team:TOC",),
    "isr": ("care_team:ISR",),
    "sud": ("care_team:SUD-ENS",),
    "manager": ("ops",),
    "ops": ("ops",),
}


@functools.cache
def _decoy() -> str:
    """A hash no password matches, checked for an unknown user (made on first use, not at import)."""
    return hash_password(secrets.token_urlsafe(12))


class _Entry(BaseModel):
    """One entry of the users file, as written (validated with the line of each mistake)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    token_sha256: str | None = Field(default=None, min_length=1)
    password_scrypt: str | None = None
    roles: list[str] = []

    @field_validator("password_scrypt")
    @classmethod
    def _scrypt(cls, value: str | None) -> str | None:
        if value is not None:
            _parse_scrypt(value)
        return value

    @model_validator(mode="after")
    def _a_way_in(self) -> _Entry:
        if self.token_sha256 is None and self.password_scrypt is None:
            raise ValueError("give token_sha256 (API), password_scrypt (web app sign-in) or both")
        return self

    @field_validator("roles")
    @classmethod
    def _known(cls, roles: list[str]) -> list[str]:
        known = ("ops", "partner", WEBAPP_ROLE, "care_team:*", *(f"care_team:{p}" for p in PROGRAMS))
        unknown = [r for r in roles if r not in known]
        if unknown:
            raise ValueError(f"unknown roles {unknown}; use {', '.join(known)}")
        return roles


class _File(BaseModel):
    entries: list[_Entry]


_HINT = "set WPC_USERS_FILE to a users file (example: deploy/users.example.yaml)"


def load_users(path: Path, *, setting: str | None = None) -> Users:
    """The users file at ``path``; a mistake raises `ConfigError` with its line."""
    doc = read_yaml(path, setting=setting, hint=_HINT)
    if doc.data is None:
        return Users({})
    if not isinstance(doc.data, list):
        raise ConfigError(f"{doc.label}: the users file must be a YAML list of users (see services/auth.py)")
    file = validate(doc, _File, {"entries": doc.data}, wrapped_in="entries")
    entries: dict[str, User] = {}
    passwords: dict[str, str] = {}
    people: dict[str, User] = {}
    for n, e in enumerate(file.entries):
        if e.name in people:
            raise ConfigError(doc.error([n, "name"], f"user {e.name!r} is named twice"))
        user = people[e.name] = User(e.name, frozenset(e.roles))
        if e.password_scrypt is not None:
            passwords[e.name] = e.password_scrypt
        if e.token_sha256 is None:
            continue
        digest = e.token_sha256.lower()
        if digest in entries:
            raise ConfigError(doc.error([n, "token_sha256"], f"the same token as user {entries[digest].name!r}"))
        entries[digest] = user
    return Users(entries, passwords, people.values())


# Declares the bearer scheme in OpenAPI (``/docs`` gets its "Authorize" button); the token
# itself is read below, where a missing or wrong one is our 401 with its reason.
BEARER = HTTPBearer(auto_error=False, description="A token of WPC_USERS_FILE (`wpc up` prints a demo one)")


def current_user(
    request: Request, _declared: Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)] = None,
) -> User:
    """FastAPI dependency: the authenticated user, or 401."""
    users: Users = request.app.state.users
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    user = users.authenticate(token.strip()) if scheme.lower() == "bearer" and token else None
    if user is None:
        raise HTTPException(401, "a valid bearer token is required", headers={"WWW-Authenticate": "Bearer"})
    acting = request.headers.get(ACTING_USER_HEADER)
    if acting is None:
        return user
    if not user.has(WEBAPP_ROLE):
        raise HTTPException(403, f"only the web app may send {ACTING_USER_HEADER}")
    person = users.named(acting)
    if person is None or person.has(WEBAPP_ROLE):
        raise HTTPException(403, f"{ACTING_USER_HEADER} names no user of the users file")
    return User(person.name, person.roles, via=user.name)
