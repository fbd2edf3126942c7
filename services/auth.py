"""Who may call the services' APIs (enrollment, notifier): bearer tokens from a users file, roles per program.

``WPC_USERS_FILE`` is a YAML list; tokens are stored as SHA-256 digests only::

    - name: maria.lopez            # recorded in the audit trail as the actor
      token_sha256: 5e88...        # sha256 of the bearer token, hex
      roles: [care_team:TOC, care_team:SUD-ENS]

Roles:

* ``care_team:<PROGRAM>`` (``care_team:*`` for all programs): read and act on that
  program's candidates; record and revoke a person's 42 CFR Part 2 consent when the
  person is a candidate or enrollee of that program (`may_handle_consent`): a TOC team
  has no say over the consent of someone who is only a SUD-ENS candidate.
* ``partner``: post flags from a partner system (housing, probation, children and
  family services); load a health plan's PCP roster or a practice's panel.
* ``ops``: identity links and unlinks (ops only: a wrong link merges two people's
  histories, so it is not a care team's call), measures, every program's candidates
  read-only, Part 2 consents of anyone, notification failures and re-sends, rosters and
  panels.

A request without a valid token gets 401, a role it lacks 403 with the reason.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from fastapi import HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator

from schemas.enrollment import PROGRAMS
from services.configfile import ConfigError, read_yaml, validate


@dataclass(frozen=True)
class User:
    name: str
    roles: frozenset[str]

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


class Users:
    def __init__(self, entries: dict[str, User]) -> None:
        self._by_digest = entries

    def authenticate(self, token: str) -> User | None:
        digest = hashlib.sha256(token.encode()).hexdigest()
        for known, user in self._by_digest.items():
            if hmac.compare_digest(known, digest):
                return user
        return None

    @classmethod
    def single(cls, token: str, name: str, roles: frozenset[str]) -> Users:
        return cls({hashlib.sha256(token.encode()).hexdigest(): User(name, roles)})


class _Entry(BaseModel):
    """One entry of the users file, as written (validated with the line of each mistake)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    token_sha256: str = Field(min_length=1)
    roles: list[str] = []

    @field_validator("roles")
    @classmethod
    def _known(cls, roles: list[str]) -> list[str]:
        known = ("ops", "partner", "care_team:*", *(f"care_team:{p}" for p in PROGRAMS))
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
    for n, e in enumerate(file.entries):
        digest = e.token_sha256.lower()
        if digest in entries:
            raise ConfigError(doc.error([n, "token_sha256"], f"the same token as user {entries[digest].name!r}"))
        entries[digest] = User(e.name, frozenset(e.roles))
    return Users(entries)


def current_user(request: Request) -> User:
    """FastAPI dependency: the authenticated user, or 401."""
    users: Users = request.app.state.users
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    user = users.authenticate(token.strip()) if scheme.lower() == "bearer" and token else None
    if user is None:
        raise HTTPException(401, "a valid bearer token is required", headers={"WWW-Authenticate": "Bearer"})
    return user
