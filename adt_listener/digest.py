"""What makes two messages under one control id *the same message*: the content digest.

HL7 v2 chapter 2.9 lets a sender resend a message whose ACK it did not get, under the
same MSH-10, and expects the same answer; the receiver must not process it twice. But
control ids do get reused for *different* messages (a counter reset when an interface
engine is reinstalled, ids built from a timestamp, test feeds that all say
``MSG00001``), and taking such a message for a resend drops it. So a retransmission is
recognized by its content, not its control id alone: two messages from one facility
(MSH-4) with one MSH-10 are the same message when their *content digests* are equal.

The digest is SHA-256 (its first 16 bytes) of the message normalized as follows, and
nothing more: it ignores exactly what the listener's reader (`adt_listener.er7`) does not read
as data, plus MSH-7:

1. A leading UTF-8 byte order mark and leading whitespace (SP HT CR LF VT FF) are
   dropped.
2. CRLF and LF are the segment terminator CR (chapter 2.5 prescribes CR; files and
   HTTP bodies carry the others).
3. Trailing SP and HT at the end of a segment line (also VT and FF after the first
   line, as the reader) are dropped, and empty lines are skipped; the message ends
   with one CR whatever it ended with.
4. MSH-7 (date/time of message) is emptied: a sender's engine stamps it anew when it
   resends, so a resend may differ from the original there alone. The separators stay,
   so the other fields keep their positions.

Everything else counts, byte for byte: a changed character anywhere else (MSH-9, a
PID field, a segment more or less, MSH-18, the encoding characters) makes a different
message, which is stored and processed as the new message it is. That errs on the side
of keeping: a resend that an engine also altered elsewhere is kept twice (its event
has its own id; the enrollment history folds a repeated fact into the same encounter),
while the other error would lose a patient's admission.

MSH-7 is found by splitting the MSH line's bytes on the field separator, as the reader
finds MSH-18 before decoding. In the two double-byte charsets of HL7 table 0211 whose
second bytes include ASCII (``BIG-5``, ``GB 18030-2000``), a byte split can land inside
a character and empty another field than MSH-7. So when the MSH line names one of them
anywhere and has non-ASCII bytes before MSH-7, MSH-7 is kept in the digest: such a
message is the same only as its copies that differ in steps 1-3 alone.

The definition is stored data: ``adt_message.content_digest`` holds it and the event
id of a message is derived from it (`schemas.adt_event.event_id_for`), so changing
this function would turn every later resend of a stored message into a new message.
Pure and never raises, whatever the bytes (hypothesis fuzzes it). It runs on the ACK
path, in `intake`: about 2 to 3.5 us per message here (the 92 public samples and the
synthetic feed, 650 to 1,200 bytes), some 5 % of deciding a message.
"""

from __future__ import annotations

import hashlib

__all__ = ["DIGEST_SIZE", "content_digest", "normalized"]

DIGEST_SIZE = 16  # 128 bits: a chance collision between two messages is out of reach

_BOM = b"\xef\xbb\xbf"
_LEADING_WS = b" \t\r\n\x0b\x0c"
_DOUBLE_BYTE_CHARSETS = (b"BIG-5", b"GB 18030-2000")  # MSH-18 labels the reader decodes as big5 / gb18030


def _blank_msh7(first: bytes) -> bytes:
    """The MSH line with MSH-7 emptied (any other first line unchanged)."""
    if len(first) < 4 or not first.startswith(b"MSH"):
        return first
    fs = first[3:4]
    # "MSH" fs MSH-2 fs MSH-3 ... : after the split, parts[n - 1] is MSH-n, n >= 2.
    parts = first.split(fs, 7)
    if len(parts) < 7 or not parts[6]:
        return first
    if not b"".join(parts[:6]).isascii():
        # Looked for in the whole line, not at MSH-18: the split that would find MSH-18 is
        # the very one a double-byte character can shift.
        upper = first.upper()
        if any(label in upper for label in _DOUBLE_BYTE_CHARSETS):
            return first
    parts[6] = b""
    return fs.join(parts)


def normalized(raw: bytes) -> bytes:
    """The bytes the digest is taken of (module docstring, steps 1 to 4)."""
    data = raw[3:] if raw.startswith(_BOM) else raw
    data = data.lstrip(_LEADING_WS)
    if b"\n" in data:
        data = data.replace(b"\r\n", b"\r").replace(b"\n", b"\r")
    lines = data.split(b"\r")
    out = [_blank_msh7(lines[0].rstrip(b" \t"))]
    for line in lines[1:]:
        line = line.rstrip(b" \t\x0b\x0c")
        if line:
            out.append(line)
    out.append(b"")  # the final CR
    return b"\r".join(out)


def content_digest(raw: bytes) -> bytes:
    """The 16-byte digest of a message; equal for a message and its retransmissions."""
    # SHA-256 rather than BLAKE2b: with the CPU's SHA extensions it is the faster of the
    # two here (0.6 against 0.8 us for a 650-byte message).
    return hashlib.sha256(normalized(raw)).digest()[:DIGEST_SIZE]
