"""The delivery channels against real receivers on loopback (`tests.receivers`)."""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid
from collections.abc import AsyncIterator

import pytest

from notifier.channels.base import Channel, PermanentDeliveryError, RetryableDeliveryError
from notifier.channels.email import EmailChannel, message_id
from notifier.channels.fhir import FhirChannel
from notifier.channels.webhook import WebhookChannel, verify
from notifier.fhir_bundle import bundle_bytes, content_type, notification_bundle
from notifier.model import Content, Encounter, Endpoint, Outbound, Patient, PatientId
from tests.receivers import HttpReceiver, SmtpReceiver, closed_port

SECRET = "whsec_toc_south"
BODY = b'{"event":"candidate","candidate_id":"6d0f","program":"TOC"}'
# Generous against a busy 2-CPU machine, short enough that the timeout cases stay fast.
CONNECT_S, TOTAL_S = 2.0, 5.0


def outbound(endpoint: Endpoint, body: bytes = BODY, content: str = "application/json") -> Outbound:
    key = f"notice-{uuid.uuid4().hex[:12]}.{endpoint.name}"
    return Outbound(
        delivery_id=uuid.uuid4(),
        idempotency_key=key,
        endpoint=endpoint,
        subject="New TOC candidate",
        content_type=content,
        body=body,
    )


@pytest.fixture
async def hooks() -> AsyncIterator[HttpReceiver]:
    async with HttpReceiver(secret=SECRET, slow_s=3.0) as receiver:
        yield receiver


@pytest.fixture
async def webhook() -> AsyncIterator[WebhookChannel]:
    channel = WebhookChannel(connect_timeout=CONNECT_S, total_timeout=TOTAL_S)
    yield channel
    await channel.close()


def hook_endpoint(receiver: HttpReceiver, secret: str | None = SECRET) -> Endpoint:
    return Endpoint(name="toc-south", kind="webhook", url=f"{receiver.url}/hooks/wpc", secret=secret)


# --- webhook --------------------------------------------------------------------------


async def test_webhook_delivered_and_signed(hooks: HttpReceiver, webhook: WebhookChannel) -> None:
    message = outbound(hook_endpoint(hooks))

    assert await webhook.send(message) == "delivered"

    assert await hooks.wait_for(1) == {message.idempotency_key: BODY}
    [request] = hooks.requests
    assert (request.method, request.path, request.body, request.status) == ("POST", "/hooks/wpc", BODY, 200)
    assert request.signature_ok is True
    assert request.headers["content-type"] == "application/json"
    assert request.headers["idempotency-key"] == message.idempotency_key
    assert request.headers["x-wpc-delivery"] == str(message.delivery_id)
    # What a partner does with our documented scheme, independently of the receiver helper.
    assert verify(SECRET, request.headers["x-wpc-signature"], request.body, time.time())
    assert not verify("another-secret", request.headers["x-wpc-signature"], request.body, time.time())


async def test_webhook_signs_every_attempt_afresh(hooks: HttpReceiver) -> None:
    clock = iter([1_760_000_000.0, 1_760_000_090.0])
    channel = WebhookChannel(clock=lambda: next(clock), connect_timeout=CONNECT_S, total_timeout=TOTAL_S)
    hooks.clock = lambda: 1_760_000_100.0
    message = outbound(hook_endpoint(hooks))
    try:
        assert await channel.send(message) == "delivered"
        assert await channel.send(message) == "delivered"  # a re-send of the same Outbound
    finally:
        await channel.close()

    first, second = (r.headers["x-wpc-signature"] for r in hooks.requests)
    assert first.startswith("t=1760000000,") and second.startswith("t=1760000090,")
    assert [r.signature_ok for r in hooks.requests] == [True, True]
    assert len(hooks.unique) == 1  # same Idempotency-Key: the partner keeps one


async def test_webhook_500_is_retryable(hooks: HttpReceiver, webhook: WebhookChannel) -> None:
    hooks.mode = "500"
    with pytest.raises(RetryableDeliveryError) as caught:
        await webhook.send(outbound(hook_endpoint(hooks)))
    assert caught.value.reason == "http 500 from webhook toc-south"
    assert [r.status for r in hooks.requests] == [500]
    assert hooks.unique == {}


@pytest.mark.parametrize("status", ["408", "425", "429", "503"])
async def test_webhook_retryable_statuses(hooks: HttpReceiver, webhook: WebhookChannel, status: str) -> None:
    hooks.mode = status
    with pytest.raises(RetryableDeliveryError, match=f"^http {status} from webhook toc-south$"):
        await webhook.send(outbound(hook_endpoint(hooks)))


@pytest.mark.parametrize("status", ["404", "400", "410", "301"])
async def test_webhook_permanent_statuses(hooks: HttpReceiver, webhook: WebhookChannel, status: str) -> None:
    hooks.mode = status
    hooks.response_body = b'{"error":"no such hook for RIVERA, ANA"}'
    with pytest.raises(PermanentDeliveryError) as caught:
        await webhook.send(outbound(hook_endpoint(hooks)))
    assert caught.value.reason == f"http {status} from webhook toc-south"  # the body never leaks
    assert len(hooks.requests) == 1  # a 301 is not followed


async def test_webhook_wrong_secret_is_rejected_permanently(hooks: HttpReceiver, webhook: WebhookChannel) -> None:
    with pytest.raises(PermanentDeliveryError, match=r"^http 401 from webhook toc-south$"):
        await webhook.send(outbound(hook_endpoint(hooks, secret="whsec_stale")))
    assert [r.signature_ok for r in hooks.requests] == [False]
    assert hooks.unique == {}


async def test_webhook_slow_receiver_times_out(hooks: HttpReceiver) -> None:
    hooks.mode = "slow"  # answers after 3 s
    channel = WebhookChannel(connect_timeout=CONNECT_S, total_timeout=0.5)
    started = time.monotonic()
    try:
        with pytest.raises(RetryableDeliveryError) as caught:
            await channel.send(outbound(hook_endpoint(hooks)))
    finally:
        await channel.close()
    assert time.monotonic() - started < 2.5
    assert caught.value.reason in ("timeout after 0.5 s from webhook toc-south", "read timeout from webhook toc-south")
    assert len(hooks.requests) == 1 and hooks.requests[0].status == 0  # arrived, never answered


async def test_webhook_down_then_back(hooks: HttpReceiver, webhook: WebhookChannel) -> None:
    url = hooks.url
    assert await webhook.send(outbound(hook_endpoint(hooks))) == "delivered"  # leaves a pooled connection

    hooks.mode = "down"
    with pytest.raises(RetryableDeliveryError, match=r"^connection failed from webhook toc-south$"):
        await webhook.send(outbound(hook_endpoint(hooks)))

    await hooks.start()
    assert hooks.url == url  # same port
    assert await webhook.send(outbound(hook_endpoint(hooks))) == "delivered"
    await hooks.wait_for(2)


async def test_webhook_nobody_listening(webhook: WebhookChannel) -> None:
    endpoint = Endpoint(name="gone", kind="webhook", url=f"http://127.0.0.1:{await closed_port()}/", secret=SECRET)
    with pytest.raises(RetryableDeliveryError, match=r"^connection failed from webhook gone$"):
        await webhook.send(outbound(endpoint))


async def test_webhook_without_secret_is_a_configuration_error(hooks: HttpReceiver, webhook: WebhookChannel) -> None:
    with pytest.raises(ValueError, match="no signing secret"):
        await webhook.send(outbound(hook_endpoint(hooks, secret=None)))
    assert hooks.requests == []


# --- FHIR -----------------------------------------------------------------------------


def bundle_outbound(endpoint: Endpoint) -> tuple[Outbound, dict[str, object]]:
    key = f"notice-{uuid.uuid4().hex[:12]}.fhir"
    content = Content(
        event="admit",
        occurred_at=dt.datetime(2025, 3, 1, 16, 15, tzinfo=dt.UTC),
        patient=Patient(ids=(PatientId("MRN001", authority="STMARY"),), family="RIVERA", sex="F"),
        encounter=Encounter(facility="STMARY", visit_number="V42", patient_class="E"),
    )
    bundle = notification_bundle(
        content,
        bundle_id=key,
        sender="LA County WPC",
        recipient_id="toc-south",
        recipient_endpoint=endpoint.url or "",
        now=dt.datetime(2025, 3, 1, 16, 16, tzinfo=dt.UTC),
    )
    message = Outbound(
        delivery_id=uuid.uuid4(),
        idempotency_key=key,
        endpoint=endpoint,
        subject="ADT notification",
        content_type=content_type,
        body=bundle_bytes(bundle),
    )
    return message, bundle


@pytest.fixture
async def fhir_server() -> AsyncIterator[HttpReceiver]:
    async with HttpReceiver() as receiver:
        yield receiver


@pytest.fixture
async def fhir() -> AsyncIterator[FhirChannel]:
    channel = FhirChannel(connect_timeout=CONNECT_S, total_timeout=TOTAL_S)
    yield channel
    await channel.close()


async def test_fhir_posts_bundle_to_process_message(fhir: FhirChannel) -> None:
    # One partner taking webhooks (HMAC) and FHIR messages (bearer token) on the same server.
    async with HttpReceiver(secret=SECRET, bearer="tok-123") as partner:
        endpoint = Endpoint(name="toc-fhir", kind="fhir", url=f"{partner.url}/fhir/r4/", secret="tok-123")
        message, bundle = bundle_outbound(endpoint)

        assert await fhir.send(message) == "delivered"

        [request] = partner.requests
        assert (request.method, request.path, request.status) == ("POST", "/fhir/r4/$process-message", 200)
        assert request.signature_ok is True  # the bearer token matched
        assert request.headers["authorization"] == "Bearer tok-123"
        assert request.headers["content-type"] == "application/fhir+json"
        assert request.headers["idempotency-key"] == message.idempotency_key
        assert request.body == message.body
        assert json.loads(request.body) == bundle
        assert json.loads(request.body)["entry"][0]["resource"]["eventCoding"]["code"] == "notification-admit"
        assert partner.unique == {message.idempotency_key: message.body}


async def test_fhir_wrong_token_is_permanent(fhir: FhirChannel) -> None:
    async with HttpReceiver(bearer="tok-new") as partner:
        message, _ = bundle_outbound(Endpoint(name="toc-fhir", kind="fhir", url=partner.url, secret="tok-old"))
        with pytest.raises(PermanentDeliveryError, match=r"^http 401 from fhir toc-fhir$"):
            await fhir.send(message)
        assert [r.signature_ok for r in partner.requests] == [False]


async def test_fhir_without_token_sends_no_authorization(fhir_server: HttpReceiver, fhir: FhirChannel) -> None:
    message, _ = bundle_outbound(Endpoint(name="open-fhir", kind="fhir", url=fhir_server.url))
    assert await fhir.send(message) == "delivered"
    assert fhir_server.requests[0].path == "/$process-message"
    assert "authorization" not in fhir_server.requests[0].headers


async def test_fhir_operation_outcome_stays_out_of_the_reason(fhir_server: HttpReceiver, fhir: FhirChannel) -> None:
    fhir_server.mode = "422"
    fhir_server.response_type = "application/fhir+json"
    fhir_server.response_body = json.dumps(
        {
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": "invariant", "diagnostics": "Patient RIVERA: bad birthDate"}],
        }
    ).encode()
    message, _ = bundle_outbound(Endpoint(name="toc-fhir", kind="fhir", url=fhir_server.url, secret="tok"))
    with pytest.raises(PermanentDeliveryError) as caught:
        await fhir.send(message)
    assert caught.value.reason == "http 422 from fhir toc-fhir"


async def test_fhir_503_and_down_are_retryable(fhir_server: HttpReceiver, fhir: FhirChannel) -> None:
    message, _ = bundle_outbound(Endpoint(name="toc-fhir", kind="fhir", url=fhir_server.url))
    fhir_server.mode = "503"
    with pytest.raises(RetryableDeliveryError, match=r"^http 503 from fhir toc-fhir$"):
        await fhir.send(message)
    await fhir_server.stop()
    with pytest.raises(RetryableDeliveryError, match=r"^connection failed from fhir toc-fhir$"):
        await fhir.send(message)


# --- e-mail ---------------------------------------------------------------------------


@pytest.fixture
async def smtp() -> AsyncIterator[SmtpReceiver]:
    async with SmtpReceiver() as receiver:
        yield receiver


def mailer(smtp: SmtpReceiver) -> EmailChannel:
    return EmailChannel(host=smtp.host, port=smtp.port, sender="notifier@wpc.example", timeout=5.0)


MAIL_ENDPOINT = Endpoint(name="pcp-mail", kind="email", to=("intake@clinic.example", "rn@clinic.example"))
TEXT = "A patient of your practice was enrolled in TOC.\nCare team: Zoë Martínez, 555-0100.\n"


async def test_email_arrives_with_message_id_from_key(smtp: SmtpReceiver) -> None:
    message = outbound(MAIL_ENDPOINT, TEXT.encode(), "text/plain")

    assert await mailer(smtp).send(message) == "sent"

    [mail] = await smtp.wait_for(1)
    assert mail["Message-ID"] == f"<{message.idempotency_key}@wpc.notifier>"
    assert mail["Subject"] == "New TOC candidate"
    assert mail["From"] == "notifier@wpc.example"
    assert mail["To"] == "intake@clinic.example, rn@clinic.example"
    assert mail.get_content_type() == "text/plain"
    assert mail.get_content().replace("\r\n", "\n") == TEXT  # SMTP carries lines as CRLF
    assert smtp.mails[0].mail_from == "notifier@wpc.example"
    assert smtp.mails[0].rcpt_tos == ["intake@clinic.example", "rn@clinic.example"]


@pytest.mark.parametrize(
    ("code", "stage", "error"),
    [
        (451, "rcpt", RetryableDeliveryError),
        (550, "rcpt", PermanentDeliveryError),
        (451, "data", RetryableDeliveryError),
        (554, "data", PermanentDeliveryError),
    ],
)
async def test_email_reply_codes(
    smtp: SmtpReceiver, code: int, stage: str, error: type[RetryableDeliveryError | PermanentDeliveryError]
) -> None:
    smtp.reply = code
    smtp.reply_at = "rcpt" if stage == "rcpt" else "data"
    with pytest.raises(error) as caught:
        await mailer(smtp).send(outbound(MAIL_ENDPOINT, TEXT.encode(), "text/plain"))
    assert type(caught.value) is error
    assert caught.value.reason.startswith(f"smtp {code} from email pcp-mail")
    assert smtp.mails == []


async def test_email_one_bad_address_of_two(smtp: SmtpReceiver) -> None:
    smtp.refuse = {"rn@clinic.example": 550}
    assert await mailer(smtp).send(outbound(MAIL_ENDPOINT, TEXT.encode(), "text/plain")) == "sent"
    [received] = smtp.mails
    assert received.rcpt_tos == ["intake@clinic.example"]

    smtp.refuse = {"rn@clinic.example": 451}  # temporary: worth a retry, the other one dedupes
    with pytest.raises(RetryableDeliveryError, match=r"^smtp 451 from email pcp-mail for 1 recipient"):
        await mailer(smtp).send(outbound(MAIL_ENDPOINT, TEXT.encode(), "text/plain"))


async def test_email_relay_down_is_retryable() -> None:
    channel = EmailChannel(host="127.0.0.1", port=await closed_port(), sender="notifier@wpc.example", timeout=5.0)
    with pytest.raises(RetryableDeliveryError, match=r"^smtp connection failed to email pcp-mail$"):
        await channel.send(outbound(MAIL_ENDPOINT, TEXT.encode(), "text/plain"))


async def test_email_starttls_missing_is_permanent(smtp: SmtpReceiver) -> None:
    channel = EmailChannel(host=smtp.host, port=smtp.port, sender="notifier@wpc.example", starttls=True, timeout=5.0)
    with pytest.raises(PermanentDeliveryError, match=r"^smtp feature missing at email pcp-mail$"):
        await channel.send(outbound(MAIL_ENDPOINT, TEXT.encode(), "text/plain"))
    assert smtp.mails == []


def test_message_id_rejects_keys_that_would_break_the_header() -> None:
    assert message_id("0b7d6c1e-5f2a-4e7b-9a51-3f0c2d8e4b61") == "<0b7d6c1e-5f2a-4e7b-9a51-3f0c2d8e4b61@wpc.notifier>"
    for bad in ["", "a b", "a@b", "a>b", "key\r\nBcc: x@y", "clé"]:
        with pytest.raises(ValueError):
            message_id(bad)


async def test_every_channel_implements_the_port() -> None:
    # Typed as the port: mypy on this file checks send/close signatures against base.Channel.
    channels: list[Channel] = [
        WebhookChannel(),
        FhirChannel(),
        EmailChannel(host="127.0.0.1", port=25, sender="notifier@wpc.example"),
    ]
    for channel in channels:
        await channel.close()
