"""Exceptions of the ADT listener, one root for the package.

The tree separates *their fault* (the bytes a sender gave us cannot be accepted: we
answer with an AE/AR acknowledgment, HL7 v2 chapter 2.9, and keep the raw message)
from *our fault* (a bug or an outage: crash loudly, or answer AR with ERR code 207 so
the sender retries)::

    ListenerError                 root: catch this to catch anything raised here
    ├── Er7Error                  their fault: the bytes are not an ER7 message we can read
    │                             (no MSH first, unusable MSH-1/MSH-2); carries an HL7 table
    │                             0357 error code and a location such as "MSH-2"
    └── (room for more: framing errors of the MLLP driver, storage errors translated at
         the adapter with ``raise ... from exc``, ...)

Error texts never contain field values (they may be PHI); they name the location.
"""

from __future__ import annotations


class ListenerError(Exception):
    """Root of every exception raised by ``adt_listener``."""


class Er7Error(ListenerError):
    """Their fault: the input cannot be read as an HL7 v2 ER7 message.

    ``code`` is an HL7 table 0357 message error condition code (100 segment sequence
    error, 102 data type error, ...); ``location`` names where, e.g. ``"MSH-2"``.
    """

    def __init__(self, text: str, *, code: int, location: str) -> None:
        super().__init__(text)
        self.text = text
        self.code = code
        self.location = location

    def __repr__(self) -> str:
        return f"Er7Error({self.text!r}, code={self.code}, location={self.location!r})"
