"""The channel port and its errors.

Error tree (one root, as in httpx ``_exceptions``)::

    DeliveryError                 an attempt did not get the message to the receiver
    ├── RetryableDeliveryError    receiver down, timed out, 5xx, 408, 429, SMTP 4xx: try again later
    └── PermanentDeliveryError    4xx (but 408/429), SMTP 5xx, bad address: retrying cannot help

Messages of these errors name the endpoint and the status, never the content (PHI).
"""

from __future__ import annotations

from typing import Protocol

from notifier.model import DeliveryOutcome, Outbound


class DeliveryError(Exception):
    """Root of the channel errors; ``reason`` is short, PHI-free and goes to the delivery record."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class RetryableDeliveryError(DeliveryError):
    pass


class PermanentDeliveryError(DeliveryError):
    pass


class Channel(Protocol):
    async def send(self, message: Outbound) -> DeliveryOutcome:
        """Transmit once. Return how far it got, or raise a `DeliveryError`."""
        ...

    async def close(self) -> None: ...
