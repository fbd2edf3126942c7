"""A stored message as a person reads it: segment by segment, each field with its HL7 name.

The split is our ER7 reader's (`adt_listener.er7`): the same decoding and delimiters the
ACK path used, and it reads what the listener rejected too (hl7apy's parser refuses a
message it finds malformed, which is exactly the one an engineer opens). The names come
from hl7apy's structure definitions (``load_reference``), for the version the message
declares in MSH-12: every segment of every version 2.1 to 2.8.2, which a table of our
own would have to copy by hand and would never cover as well. Looked up off the hot path
(only when someone opens a message) and cached per (version, segment). A segment hl7apy
does not know (Z segments) shows its fields numbered, without names.

A message the reader cannot split (no MSH first, unusable delimiters: the AR cases) is
shown line by line, cut at ``|``, without names: still readable, never an error.
Values are shown as received (still ER7-escaped), so what is on screen is what was sent.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from adt_listener.er7 import Message, text_of

# hl7apy's default version: used for a message without a usable MSH-12.
_FALLBACK_VERSION = "2.5"
_NAMELESS: dict[int, tuple[str, str]] = {}


@dataclass(frozen=True, slots=True)
class FieldView:
    n: int  # SEG-n
    name: str | None  # e.g. "Patient identifier list"; None when hl7apy does not know the field
    datatype: str | None  # e.g. "CX"
    value: str  # as received (ER7-escaped)


@dataclass(frozen=True, slots=True)
class SegmentView:
    name: str  # segment id, e.g. PID
    fields: tuple[FieldView, ...]  # non-empty fields only, in order


def readable(long_name: str, segment: str = "") -> str:
    """hl7apy's ``PATIENT_IDENTIFIER_LIST`` as "Patient identifier list".

    Abbreviations stay capitals (ID, words without a vowel such as SSN, and the segment's
    own name: "Set ID PID"), and hl7apy's ``MOTHER_S`` becomes "mother's"."""
    words = [w for w in long_name.split("_") if w]
    out: list[str] = []
    for w in words:
        if w == "S" and out:
            out[-1] += "'s"
            continue
        upper = w.upper()
        if upper in ("ID", segment) or not any(c in "AEIOUY" for c in upper):
            out.append(upper)
        else:
            out.append(w.lower())
    if out and not out[0].isupper():
        out[0] = out[0][:1].upper() + out[0][1:]
    return " ".join(out)


@functools.lru_cache(maxsize=512)
def field_names(version: str, segment: str) -> dict[int, tuple[str, str]]:
    """{n: (name, datatype)} of ``segment``'s fields in ``version`` ({} when unknown)."""
    from hl7apy import SUPPORTED_LIBRARIES, load_reference  # the listener's edge; only on demand
    from hl7apy.exceptions import HL7apyException

    if version not in SUPPORTED_LIBRARIES:
        version = _FALLBACK_VERSION
    try:
        reference = load_reference(segment, "Segment", version)
    except (HL7apyException, KeyError, ValueError):
        return _NAMELESS
    names: dict[int, tuple[str, str]] = {}
    for child in reference[1]:
        tag, definition = child[0], child[1]
        _, _, number = str(tag).rpartition("_")
        if number.isdigit():
            names[int(number)] = (readable(str(definition[3]), segment), str(definition[2]))
    return names


def _field_views(name: str, values: list[str], version: str) -> tuple[FieldView, ...]:
    names = field_names(version, name) if name.isalnum() and len(name) == 3 else _NAMELESS
    views = []
    for n, value in enumerate(values, start=1):
        if value:
            known = names.get(n)
            views.append(FieldView(n, known[0] if known else None, known[1] if known else None, value))
    return tuple(views)


def segments(raw: bytes, charset: str | None = None) -> list[SegmentView]:
    """The segments of a stored message (see the module docstring). Never raises."""
    try:
        msg = Message.parse(raw)
    except Exception:
        return _lines(raw, charset)
    msh = msg.segments[0]
    version = msh.field(12).split(msg.delimiters.component)[0] or _FALLBACK_VERSION
    return [SegmentView(seg.name, _field_views(seg.name, seg.fields[1:], version)) for seg in msg.segments]


def _lines(raw: bytes, charset: str | None) -> list[SegmentView]:
    text = text_of(raw, charset).replace("\r\n", "\r").replace("\n", "\r")
    out = []
    for line in text.split("\r"):
        line = line.rstrip()
        if line:
            name, *values = line.split("|")
            out.append(SegmentView(name[:3], tuple(FieldView(n, None, None, v) for n, v in enumerate(values, 1) if v)))
    return out
