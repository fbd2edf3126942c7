"""FHIR messaging: a Da Vinci notification bundle POSTed to the partner's ``$process-message``.

The Da Vinci Unsolicited Notifications IG (HL7 FHIR R4) has the sender invoke the standard
``$process-message`` operation on the receiver's FHIR base: ``POST [base]/$process-message``
with the message Bundle as the body (IG CapabilityStatements notification-sender and
notification-receiver: the receiver SHALL support ``$process-message``).
The bundle itself is built by `notifier.fhir_bundle` and stored in the Outbound, so a retry
sends the same document, with the same Bundle.id and MessageHeader.id.

Authentication: ``Authorization: Bearer <endpoint.secret>`` when the endpoint has a secret
(the IG's security page leaves the scheme to trading partners; SMART backend services hand
out bearer tokens too). ``Idempotency-Key`` is sent as well, for receivers that dedupe at
the HTTP layer rather than on MessageHeader.id.

Statuses are mapped as for webhooks (`webhook.outcome_of`). A 4xx usually carries an
OperationOutcome that may quote the bundle: the response body is never read, so it cannot
end up in a delivery reason or a log.
"""

from __future__ import annotations

import httpx

from notifier.channels.webhook import IDEMPOTENCY_HEADER, new_http_client, post_once
from notifier.fhir_bundle import content_type as FHIR_JSON
from notifier.model import DeliveryOutcome, Endpoint, Outbound

OPERATION = "$process-message"


def process_message_url(endpoint: Endpoint) -> str:
    """``{base}/$process-message``; ValueError when the endpoint has no FHIR base URL."""
    if not endpoint.url:
        raise ValueError(f"fhir endpoint {endpoint.name!r} has no base url")
    return f"{endpoint.url.rstrip('/')}/{OPERATION}"


class FhirChannel:
    """`base.Channel` for FHIR receivers; one shared connection pool for all endpoints."""

    def __init__(
        self,
        *,
        connect_timeout: float = 5.0,
        total_timeout: float = 15.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._total_timeout = total_timeout
        self._client = new_http_client(connect_timeout, total_timeout, transport)

    async def send(self, message: Outbound) -> DeliveryOutcome:
        endpoint = message.endpoint
        url = process_message_url(endpoint)
        if message.content_type.split(";")[0].strip().lower() != FHIR_JSON:
            # render gave this channel something that is not a bundle: our bug, not theirs.
            raise ValueError(f"fhir endpoint {endpoint.name!r} got {message.content_type}, not {FHIR_JSON}")
        headers = {
            # As rendered, so a parameter such as fhirVersion=4.0 reaches the receiver.
            "Content-Type": message.content_type,
            "Accept": FHIR_JSON,
            IDEMPOTENCY_HEADER: message.idempotency_key,
        }
        if endpoint.secret:
            headers["Authorization"] = f"Bearer {endpoint.secret}"
        return await post_once(self._client, url, message.body, headers, f"fhir {endpoint.name}", self._total_timeout)

    async def close(self) -> None:
        await self._client.aclose()
