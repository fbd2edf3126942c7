"""Sessions in a signed cookie, and the CSRF token each carries.

A session is a small JSON object (user name, CSRF token, sign-in and last-request times)
in the cookie ``wpc_session``, signed with HMAC-SHA256 under ``WPC_WEB_SESSION_SECRET``:
the server keeps no session table, so replicas share sessions through the secret alone.
The cookie is HttpOnly (no script reads it), SameSite=Lax (a cross-site POST carries no
session) and Secure when ``WPC_WEB_SECURE_COOKIES`` says the app is served over TLS.

It ends after ``WPC_WEB_IDLE_TIMEOUT_MIN`` minutes without a request (each request renews
it) and ``WPC_WEB_SESSION_MAX_HOURS`` after sign-in whatever happens. Signing out drops the
cookie; a copy stolen before then lapses with the idle time-out (the price of no table).

Every visitor, signed in or not, has a session, so the sign-in form carries a CSRF token too.
No PHI is ever in it: a user name and random tokens only.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass, replace

COOKIE = "wpc_session"


@dataclass(frozen=True)
class Session:
    csrf: str
    user: str = ""  # empty: not signed in
    signed_in_at: float = 0.0
    seen_at: float = 0.0
    # Why the last session ended ("idle"), shown once on the sign-in page.
    ended: str = ""

    @classmethod
    def fresh(cls, now: float, ended: str = "") -> Session:
        return cls(csrf=secrets.token_urlsafe(24), seen_at=now, ended=ended)

    def signed_in(self, user: str, now: float) -> Session:
        # A new CSRF token at sign-in: one learnt before it (session fixation) is worth nothing after.
        return Session(csrf=secrets.token_urlsafe(24), user=user, signed_in_at=now, seen_at=now)

    def touched(self, now: float) -> Session:
        return replace(self, seen_at=now, ended="")


class SessionCodec:
    """Turns a `Session` into a cookie value and back, checking signature and age."""

    def __init__(self, secret: str, *, idle_s: float, max_s: float) -> None:
        self._key = hashlib.sha256(b"wpc-web-session\0" + secret.encode()).digest()
        self.idle_s = idle_s
        self.max_s = max_s

    def encode(self, session: Session) -> str:
        body = base64.urlsafe_b64encode(json.dumps(
            [session.csrf, session.user, session.signed_in_at, session.seen_at, session.ended],
            separators=(",", ":")).encode()).decode().rstrip("=")
        return f"{body}.{self._sign(body)}"

    def decode(self, value: str | None, now: float) -> Session:
        """The session in ``value``; a fresh one when there is none, the signature is wrong
        or it has lapsed (then ``ended`` says why: "idle" or "expired")."""
        if not value or "." not in value:
            return Session.fresh(now)
        body, _, signature = value.rpartition(".")
        if not hmac.compare_digest(signature, self._sign(body)):
            return Session.fresh(now)
        try:
            raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
            csrf, user, signed_in_at, seen_at, ended = json.loads(raw)
            session = Session(str(csrf), str(user), float(signed_in_at), float(seen_at), str(ended))
        except (ValueError, TypeError):
            return Session.fresh(now)
        if session.user and now - session.seen_at > self.idle_s:
            return Session.fresh(now, ended="idle")
        if session.user and now - session.signed_in_at > self.max_s:
            return Session.fresh(now, ended="expired")
        return session

    def _sign(self, body: str) -> str:
        digest = hmac.new(self._key, body.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def csrf_matches(session: Session, given: str | None) -> bool:
    return bool(given) and hmac.compare_digest(session.csrf.encode(), (given or "").encode())
