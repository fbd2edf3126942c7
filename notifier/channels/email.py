"""E-mail over SMTP (aiosmtplib): one message per Outbound, handed to the configured relay.

"sent" means the relay accepted the message (RFC 5321 §4.2: 250 after the end of DATA); the
relay, not us, delivers it onwards, so this channel never says "delivered".

The Message-ID is ``<{idempotency_key}@wpc.notifier>`` on every attempt: mail systems and the
recipients' clients dedupe on it (RFC 5322 §3.6.4), which is what makes a retry after an
ambiguous failure (a timeout after DATA) harmless.

Reply codes (RFC 5321 §4.2.1): 4yz is a transient negative completion, "the same command may
succeed later" → `RetryableDeliveryError`; 5yz is permanent, "do not repeat the same request"
→ `PermanentDeliveryError`. Connection failures, disconnects and timeouts are retryable.
A relay without a feature we were configured to need (STARTTLS, AUTH) is permanent: only a
configuration change helps. aiosmtplib's exceptions are translated here, once.

Some recipients refused, others accepted: when a refusal is temporary the attempt is retried
(the accepted recipients get the same Message-ID again, and dedupe it); when every refusal is
permanent the message is "sent" to the others and the refusals are logged (counts only),
since a retry cannot fix an address and the recipients who got it were told.
"""

from __future__ import annotations

import email.utils
import logging
import re
from email.message import EmailMessage

import aiosmtplib

from notifier.channels.base import PermanentDeliveryError, RetryableDeliveryError
from notifier.model import DeliveryOutcome, Outbound

log = logging.getLogger(__name__)

MESSAGE_ID_DOMAIN = "wpc.notifier"
# The key goes inside <...@wpc.notifier>: printable ASCII without space, '<', '>', '@', so the
# Message-ID stays one msg-id (RFC 5322 §3.6.4) and no header can be smuggled in.
_KEY = re.compile(r"[!-~]+")
_KEY_FORBIDDEN = frozenset("<>@")


def message_id(idempotency_key: str) -> str:
    """``<key@wpc.notifier>``; ValueError for a key that cannot be part of a Message-ID."""
    if not _KEY.fullmatch(idempotency_key) or _KEY_FORBIDDEN.intersection(idempotency_key):
        raise ValueError("idempotency key is not usable in a Message-ID")
    return f"<{idempotency_key}@{MESSAGE_ID_DOMAIN}>"


class EmailChannel:
    """`base.Channel` over SMTP. A connection per message: notices are few and a relay may
    close idle sessions at any time (RFC 5321 §4.5.3.2.7), so pooling would buy little."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        sender: str,
        username: str | None = None,
        password: str | None = None,
        starttls: bool = False,
        use_tls: bool = False,
        timeout: float = 30.0,
    ) -> None:
        if starttls and use_tls:
            raise ValueError("starttls and use_tls are exclusive: STARTTLS upgrades a plain connection")
        self._host = host
        self._port = port
        self._sender = sender
        self._username = username
        self._password = password
        self._starttls = starttls
        self._use_tls = use_tls
        self._timeout = timeout

    def build(self, message: Outbound) -> EmailMessage:
        """The RFC 5322 message for one Outbound (public for tests and previews)."""
        endpoint = message.endpoint
        if not endpoint.to:
            raise ValueError(f"email endpoint {endpoint.name!r} has no addresses")
        mail = EmailMessage()
        mail["Subject"] = message.subject
        mail["From"] = self._sender
        mail["To"] = ", ".join(endpoint.to)
        mail["Date"] = email.utils.formatdate(usegmt=True)
        mail["Message-ID"] = message_id(message.idempotency_key)
        # Quoted-printable keeps the body 7-bit: any relay takes it, 8BITMIME or not.
        mail.set_content(message.body.decode("utf-8"), subtype="plain", charset="utf-8", cte="quoted-printable")
        return mail

    async def send(self, message: Outbound) -> DeliveryOutcome:
        mail = self.build(message)
        label = f"email {message.endpoint.name}"
        client = aiosmtplib.SMTP(
            hostname=self._host,
            port=self._port,
            username=self._username,
            password=self._password,
            use_tls=self._use_tls,
            # False, not None: None lets aiosmtplib upgrade opportunistically, and we want
            # the configured behaviour, not one that depends on what the relay advertises.
            start_tls=self._starttls,
            timeout=self._timeout,
        )
        try:
            async with client:
                refused, _ = await client.send_message(mail, sender=self._sender, recipients=list(message.endpoint.to))
        except aiosmtplib.SMTPRecipientsRefused as exc:
            raise _refusals([r.code for r in exc.recipients], label) from exc
        except aiosmtplib.SMTPResponseException as exc:
            raise _reply(exc.code, label) from exc
        except (aiosmtplib.SMTPTimeoutError, TimeoutError) as exc:
            raise RetryableDeliveryError(f"smtp timeout from {label}") from exc
        except OSError as exc:
            # Refused, reset, the server hanging up (aiosmtplib's connect / disconnect errors are
            # ConnectionErrors too): it may be back later.
            raise RetryableDeliveryError(f"smtp connection failed to {label}") from exc
        except aiosmtplib.SMTPException as exc:
            # What is left is aiosmtplib saying the relay lacks what we were configured to use
            # (STARTTLS, AUTH, SMTPUTF8): only a configuration change helps.
            raise PermanentDeliveryError(f"smtp feature missing at {label}") from exc
        if refused:
            codes = [response.code for response in refused.values()]
            if any(not 500 <= code < 600 for code in codes):
                raise _refusals(codes, label)
            log.warning("%s refused %d of %d recipients permanently", label, len(codes), len(message.endpoint.to))
        return "sent"

    async def close(self) -> None:
        """Nothing to release: each `send` opens and closes its own SMTP session."""


def _reply(code: int, label: str, detail: str = "") -> RetryableDeliveryError | PermanentDeliveryError:
    reason = f"smtp {code} from {label}{detail}"
    if 500 <= code < 600:
        return PermanentDeliveryError(reason)
    # 4yz, and anything that is not a reply code at all (aiosmtplib uses -1 for "no reply").
    return RetryableDeliveryError(reason)


def _refusals(codes: list[int], label: str) -> RetryableDeliveryError | PermanentDeliveryError:
    """RCPT refusals: one temporary refusal is worth a retry; all permanent → permanent."""
    temporary = [code for code in codes if not 500 <= code < 600]
    worst = temporary[0] if temporary else (codes[0] if codes else -1)
    return _reply(worst, label, f" for {len(codes)} recipient(s)")
