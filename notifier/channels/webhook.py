"""Signed webhooks: an HTTP POST of the rendered body, with an HMAC signature partners verify.

Signature scheme (what partners implement; `verify` is the reference receiver)::

    X-WPC-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, f"{t}." + body)>

- The timestamp is inside the signed bytes, so a receiver that rejects timestamps outside
  a window (``tolerance_s``, 5 minutes by default) cannot be fed an old, captured request.
  Within the window, replays are caught by deduplicating on ``Idempotency-Key``.
- A header may carry several ``v1=`` values, and `verify` accepts several secrets: either
  side can rotate a key without a flag day. Unknown schemes (``v0=``, ``v2=``) are ignored.
- Every attempt is signed afresh (a retry hours later would otherwise fall outside the window);
  the body and ``Idempotency-Key`` stay the same across attempts.

Headers sent: ``Content-Type`` (from the Outbound), ``X-WPC-Signature``, ``Idempotency-Key``,
``X-WPC-Delivery`` (the delivery id, for support requests; the same on every attempt).

Configuration: a webhook endpoint without a secret (or without a URL) is a configuration
error. `require_secret` says so with a ``ValueError``; the composition root should call it
when it loads the notification configuration, and `WebhookChannel.send` calls it again,
raising the same ``ValueError`` (our fault, not the receiver's: never a `DeliveryError`).

The HTTP helpers at the bottom (`new_http_client`, `post_once`) are shared with `fhir`:
both channels map statuses and transport errors in the same way.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections.abc import Callable, Iterable, Mapping

import httpx

from notifier.channels.base import PermanentDeliveryError, RetryableDeliveryError
from notifier.model import DeliveryOutcome, Endpoint, Outbound

SIGNATURE_HEADER = "X-WPC-Signature"
IDEMPOTENCY_HEADER = "Idempotency-Key"
DELIVERY_HEADER = "X-WPC-Delivery"
USER_AGENT = "wpc-notifier/1"
DEFAULT_TOLERANCE_S = 300
_MAX_HEADER = 4096  # a header longer than this is not ours: refuse to parse it


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """Hex HMAC-SHA256 of ``f"{timestamp}."`` followed by the raw body."""
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def signature_header(secret: str, timestamp: int, body: bytes) -> str:
    """The value of ``X-WPC-Signature`` for one attempt."""
    return f"t={timestamp},v1={sign(secret, timestamp, body)}"


def verify(
    secret: str | Iterable[str],
    header_value: str | None,
    body: bytes,
    now: float,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
) -> bool:
    """The receiver's check: True when ``header_value`` signs ``body`` with one of the secrets,
    at a timestamp no further than ``tolerance_s`` from ``now`` (past or future: clocks drift).

    Malformed headers (no ``t``, two ``t``, a non-numeric ``t``, no ``v1``) give False, never
    an exception: a receiver answers 401 to all of them alike.
    """
    parsed = _parse(header_value)
    if parsed is None:
        return False
    timestamp, candidates = parsed
    if abs(now - timestamp) > tolerance_s:
        return False
    secrets = [secret] if isinstance(secret, str) else list(secret)
    # An empty key would make every forger's signature valid: it never counts.
    expected = [sign(s, timestamp, body).encode() for s in secrets if s]
    matched = False
    for candidate in candidates:
        for digest in expected:
            # compare_digest for every pair (no early exit): timing says nothing about the key.
            matched |= hmac.compare_digest(digest, candidate)
    return matched


def _parse(header_value: str | None) -> tuple[int, list[bytes]] | None:
    if not header_value or len(header_value) > _MAX_HEADER or not header_value.isascii():
        return None
    timestamp: int | None = None
    candidates: list[bytes] = []
    for item in header_value.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep:
            return None
        if key == "t":
            # Plain ASCII digits only: int() would also take "+5", " 5" and "1_000".
            if timestamp is not None or not (value.isdigit() and len(value) <= 12):
                return None
            timestamp = int(value)
        elif key == "v1" and value:
            candidates.append(value.encode())
    if timestamp is None or not candidates:
        return None
    return timestamp, candidates


def require_secret(endpoint: Endpoint) -> str:
    """The endpoint's HMAC key; ValueError when a webhook endpoint has none (or no URL)."""
    return _target(endpoint)[1]


def _target(endpoint: Endpoint) -> tuple[str, str]:
    if not endpoint.url:
        raise ValueError(f"webhook endpoint {endpoint.name!r} has no url")
    if not endpoint.secret:
        raise ValueError(f"webhook endpoint {endpoint.name!r} has no signing secret")
    return endpoint.url, endpoint.secret


class WebhookChannel:
    """`base.Channel` over signed HTTP POSTs, one shared connection pool for all endpoints."""

    def __init__(
        self,
        *,
        connect_timeout: float = 5.0,
        total_timeout: float = 15.0,
        clock: Callable[[], float] = time.time,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._total_timeout = total_timeout
        self._clock = clock
        self._client = new_http_client(connect_timeout, total_timeout, transport)

    async def send(self, message: Outbound) -> DeliveryOutcome:
        endpoint = message.endpoint
        url, secret = _target(endpoint)
        headers = {
            "Content-Type": message.content_type,
            SIGNATURE_HEADER: signature_header(secret, int(self._clock()), message.body),
            IDEMPOTENCY_HEADER: message.idempotency_key,
            DELIVERY_HEADER: str(message.delivery_id),
        }
        return await post_once(
            self._client, url, message.body, headers, f"webhook {endpoint.name}", self._total_timeout
        )

    async def close(self) -> None:
        await self._client.aclose()


# --- HTTP delivery shared with `fhir` ----------------------------------------------------

# RFC 9110 §15.5.9 (408), RFC 8470 §5.2 (425 Too Early), RFC 6585 §4 (429): the request may
# succeed if repeated later. Every other 4xx says the request itself is wrong.
_RETRYABLE_4XX = frozenset({408, 425, 429})


def new_http_client(
    connect_timeout: float, total_timeout: float, transport: httpx.AsyncBaseTransport | None = None
) -> httpx.AsyncClient:
    """One pooled client per channel. Redirects are not followed: a partner that moved its
    endpoint must tell us (a redirect could otherwise carry PHI to a host nobody configured)."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(total_timeout, connect=connect_timeout),
        follow_redirects=False,
        transport=transport,
        headers={"User-Agent": USER_AGENT},
    )


def outcome_of(status: int, label: str) -> DeliveryOutcome:
    """2xx → delivered; 408/425/429/5xx → retryable; any other status (3xx, 4xx) → permanent."""
    if 200 <= status < 300:
        return "delivered"
    reason = f"http {status} from {label}"
    if status in _RETRYABLE_4XX or 500 <= status < 600:
        raise RetryableDeliveryError(reason)
    raise PermanentDeliveryError(reason)


async def post_once(
    client: httpx.AsyncClient,
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    label: str,
    total_timeout: float,
) -> DeliveryOutcome:
    """POST once and map the result. The response body is never read: it could echo PHI
    (a FHIR OperationOutcome often quotes the resource), and only the status matters."""
    try:
        # httpx has no overall deadline (its read timeout restarts on every byte): a server
        # trickling a response would hold the attempt forever without this one.
        async with asyncio.timeout(total_timeout):
            async with client.stream("POST", url, content=body, headers=headers) as response:
                status = response.status_code
    except TimeoutError as exc:  # httpx.TimeoutException is not one; asyncio.timeout raises it
        raise RetryableDeliveryError(f"timeout after {total_timeout:g} s from {label}") from exc
    except httpx.TimeoutException as exc:
        raise RetryableDeliveryError(f"{_kind(exc)} from {label}") from exc
    except (httpx.UnsupportedProtocol, httpx.InvalidURL, httpx.LocalProtocolError) as exc:
        # A URL we cannot even send to (ftp://, no host) or headers we cannot encode: no retry helps.
        raise PermanentDeliveryError(f"{_kind(exc)} for {label}") from exc
    except httpx.TransportError as exc:
        # Refused, reset, DNS failure, the peer closing mid-response: the receiver may be back later.
        raise RetryableDeliveryError(f"{_kind(exc)} from {label}") from exc
    return outcome_of(status, label)


def _kind(exc: Exception) -> str:
    # The class name only: httpx messages can quote the URL, whose query may carry a token.
    name = type(exc).__name__
    return {
        "ConnectError": "connection failed",
        "ConnectTimeout": "connect timeout",
        "ReadTimeout": "read timeout",
        "WriteTimeout": "write timeout",
        "PoolTimeout": "pool timeout",
        "ReadError": "read error",
        "WriteError": "write error",
        "RemoteProtocolError": "protocol error",
        "UnsupportedProtocol": "unsupported url scheme",
        "InvalidURL": "invalid url",
    }.get(name, name)
