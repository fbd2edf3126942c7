"""HL7 v2 acknowledgments (ACK), built as ER7 bytes.

HL7 v2 chapter 2, section 2.9 (message processing rules) and 2.14/2.15 (MSH, MSA,
ERR segment definitions):

* The ACK uses the sender's own delimiters (MSH-1/MSH-2): a receiver that sent "^"
  as field separator parses our answer with the same rules.
* MSH-3/4 (our application/facility) are the original MSH-5/6 (falling back to the
  policy's names when the sender left them empty) and MSH-5/6 are the original
  MSH-3/4, so the answer routes back. MSH-7 is now, MSH-10 a new id, MSH-11 and
  MSH-12 are echoed (MSH-12 defaults to 2.5 when the sender gave none).
* MSH-9: ``ACK^<trigger>^ACK`` from v2.4 (message structure in MSH-9.3),
  ``ACK^<trigger>`` in v2.3/2.3.1, plain ``ACK`` before.
* MSA-1 is the acknowledgment code and MSA-2 the original MSH-10. Enhanced mode
  (section 2.9.3, MSH-15 accept acknowledgment type non-empty) answers with the commit
  codes CA/CE/CR instead of AA/AE/AR; MSH-15 (HL7 table 0155: AL, NE, ER, SU) then
  says whether an ACK is sent at all (`should_send`).
* One ERR segment per finding. From v2.5, ERR-2 (ERL location ``PID^1^3``), ERR-3
  (CWE ``<code>^<text>^HL70357``), ERR-4 (severity, table 0516: E/W) and ERR-8 (user
  message). Before v2.5 only ERR-1 exists (ELD ``PID^1^3^<code>&<text>&HL70357``),
  which cannot carry a severity, so warnings are left out there: an old receiver
  would read them as errors.
* The bytes are encoded in the charset the message was decoded with, and MSH-18 is
  echoed, because the echoed MSH-3..6 may hold non-ASCII characters.
* A retransmission (the same message again, `adt_listener.digest`) gets the ACK stored
  for the original, byte for byte but for MSA-3 (text message), which begins with
  "retransmission" (`mark_retransmission`): the sender's engine reads the same code
  and MSA-2, and a person reading the log can tell the answer was not a new decision.

Finding texts are ours and never contain field values (PHI); they name locations.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from adt_listener.er7 import DEFAULT_DELIMITERS, Delimiters, Message, decode, delimiters_from, encode, escape
from adt_listener.errors import Er7Error

__all__ = [
    "RETRANSMISSION_TEXT", "AckHeader", "Finding", "build_ack", "commit_code", "mark_retransmission",
    "salvage_header", "should_send",
]


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem found in a message; becomes one ERR segment of the ACK.

    ``code`` is HL7 table 0357 (100 segment sequence error, 101 required field missing,
    102 data type error, 103 table value not found, 200 unsupported message type, 201
    unsupported event code, 202 unsupported processing id, 203 unsupported version id,
    207 application internal error). ``location`` is "PID-3", "MSH-12", a segment id
    such as "PV1", or "" when none. ``text`` is short and never holds a field value.
    """

    severity: Literal["E", "W"]
    code: int
    location: str
    text: str


# HL7 table 0357 descriptions (ERR-3.2 / ELD-4.2).
TABLE_0357: dict[int, str] = {
    0: "Message accepted",
    100: "Segment sequence error",
    101: "Required field missing",
    102: "Data type error",
    103: "Table value not found",
    200: "Unsupported message type",
    201: "Unsupported event code",
    202: "Unsupported processing id",
    203: "Unsupported version id",
    204: "Unknown key identifier",
    205: "Duplicate key identifier",
    206: "Application record locked",
    207: "Application internal error",
}

_COMMIT = {"AA": "CA", "AE": "CE", "AR": "CR"}
_MAX_ECHO = 199  # ST fields of MSH are at most 199 characters from v2.5 on


@dataclass(frozen=True, slots=True)
class AckHeader:
    """What an ACK needs from the original MSH, as raw (still escaped) field text."""

    delimiters: Delimiters
    sending_application: str  # MSH-3
    sending_facility: str  # MSH-4
    receiving_application: str  # MSH-5
    receiving_facility: str  # MSH-6
    trigger: str  # MSH-9.2 (unescaped)
    control_id: str  # MSH-10
    processing_id: str  # MSH-11
    version: str  # MSH-12
    accept_ack_type: str  # MSH-15.1, stripped and upper-cased ('' means original mode)
    character_set: str  # MSH-18 as sent
    charset: str  # the codec the message was decoded with

    @classmethod
    def from_message(cls, msg: Message) -> AckHeader:
        msh = msg.segments[0]
        return cls(
            delimiters=msg.delimiters,
            sending_application=msh.field(3),
            sending_facility=msh.field(4),
            receiving_application=msh.field(5),
            receiving_facility=msh.field(6),
            trigger=msh.get(9, 1, 2).strip(),
            control_id=msh.field(10).strip(),
            processing_id=msh.field(11),
            version=msh.field(12),
            accept_ack_type=msh.get(15).strip().upper(),
            character_set=msh.field(18),
            charset=msg.charset,
        )


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def salvage_header(raw: bytes) -> AckHeader:
    """Best-effort header of input that `Message.parse` refused (never raises).

    When the first line starts with MSH and MSH-1/MSH-2 are usable we keep them and
    echo the fields; otherwise the fields are cut at the byte after "MSH", re-escaped
    for the default delimiters ``|^~\\&`` and stripped of control characters.
    """
    data = raw[3:] if raw.startswith(b"\xef\xbb\xbf") else raw
    data = data.lstrip(b" \t\r\n\x0b\x0c")
    line = re.split(rb"[\r\n]", data, maxsplit=1)[0][:4096]
    text, charset = decode(line)
    empty = AckHeader(DEFAULT_DELIMITERS, "", "", "", "", "", "", "", "", "", "", charset)
    if not text.startswith("MSH") or len(text) < 4:
        return empty
    fs = text[3]
    fields = ["MSH", fs, *text[4:].split(fs)]
    try:
        d = delimiters_from(fs, fields[2])
        keep = True
    except Er7Error:
        d, keep = DEFAULT_DELIMITERS, False

    def raw_field(n: int) -> str:
        value = fields[n] if n < len(fields) else ""
        value = _CONTROL.sub("", value)[:_MAX_ECHO]
        return value if keep else escape(value, d)

    def first_component(n: int) -> str:
        value = fields[n] if n < len(fields) else ""
        comp = fields[2][:1] if len(fields) > 2 else ""
        if comp and not comp.isalnum():
            value = value.split(comp)[0]
        return _CONTROL.sub("", value).strip()[:_MAX_ECHO]

    msh9 = fields[9] if len(fields) > 9 else ""
    comp = fields[2][:1] if len(fields) > 2 else ""
    trigger = msh9.split(comp)[1] if comp and not comp.isalnum() and comp in msh9 else ""
    return AckHeader(
        delimiters=d,
        sending_application=raw_field(3),
        sending_facility=raw_field(4),
        receiving_application=raw_field(5),
        receiving_facility=raw_field(6),
        trigger=_CONTROL.sub("", trigger).strip()[:8],
        control_id=raw_field(10).strip(),
        processing_id=raw_field(11),
        version=raw_field(12),
        accept_ack_type=first_component(15).upper(),
        character_set=raw_field(18),
        charset=charset,
    )


def _version_tuple(version_field: str, d: Delimiters) -> tuple[int, ...]:
    first = version_field.split(d.component)[0].strip()
    parts: list[int] = []
    for p in first.split("."):
        if not p.isdigit():
            break
        parts.append(int(p))
    return tuple(parts) if parts else (2, 5)  # unknown: answer in the current style


def commit_code(code: str, header: AckHeader) -> str:
    """The MSA-1 code to send: CA/CE/CR in enhanced mode (MSH-15 present)."""
    return _COMMIT.get(code, code) if header.accept_ack_type else code


def should_send(code: str, header: AckHeader) -> bool:
    """Whether MSH-15 (table 0155) asks for this ACK; original mode always answers."""
    kind = header.accept_ack_type
    if kind == "NE":
        return False
    if kind == "ER":
        return code != "AA"
    if kind == "SU":
        return code == "AA"
    return True  # AL, original mode, or a value we do not know: answer


_last_stamp: tuple[float, dt.tzinfo | None, str] = (float("nan"), None, "")


def _timestamp(now: dt.datetime) -> str:
    """MSH-7 of an ACK: ``YYYYMMDDHHMMSS±ZZZZ`` (the offset only for an aware time).

    Formatted by hand, not with strftime: strftime goes through the C library's locale
    and time zone machinery and costs several times more, once per ACK. The last one is
    kept: under load most ACKs of a second share it. Same instant and same fixed offset
    (`datetime.timezone`, UTC included: what the listener stamps with) give the same text;
    any other time is formatted every time (a naive one's instant depends on the machine's
    zone, and a zone with daylight saving has wall times in its gaps that share an instant)."""
    global _last_stamp
    tz = now.tzinfo
    second = now.timestamp() // 1 if type(tz) is dt.timezone else float("nan")
    last_second, last_tz, last = _last_stamp
    if second == last_second and tz is last_tz:
        return last
    stamp = f"{now.year:04d}{now.month:02d}{now.day:02d}{now.hour:02d}{now.minute:02d}{now.second:02d}"
    offset = now.utcoffset()
    if offset is not None:
        minutes = int(offset.total_seconds() // 60)
        sign = "+" if minutes >= 0 else "-"
        stamp += f"{sign}{abs(minutes) // 60:02d}{abs(minutes) % 60:02d}"
    _last_stamp = (second, tz, stamp)
    return stamp


def _location_parts(location: str) -> tuple[str, str]:
    """("PID", "3") from "PID-3"; ("PV1", "") from "PV1"."""
    seg, _, field = location.partition("-")
    return seg, field.split(".")[0]


def _err_segment(f: Finding, d: Delimiters, modern: bool) -> str:
    c, s, fs = d.component, d.subcomponent, d.field
    description = TABLE_0357.get(f.code, "")
    seg, field = _location_parts(f.location)
    if modern:
        erl = c.join(p for p in (seg, "1", field) if p) if seg else ""
        cwe = c.join((str(f.code), escape(description, d), "HL70357"))
        return fs.join(("ERR", "", erl, cwe, f.severity, "", "", "", escape(f.text, d)))
    code = s.join((str(f.code), escape(description, d), "HL70357"))
    eld = c.join((seg, "1" if seg else "", field, code))
    return fs.join(("ERR", eld))


# An ACK's text is the same for every message of one sender's feed but for MSH-7, MSH-10
# and MSA-2: the rest is built once per header and decision (`_ack_template`) and kept.
# Keyed by everything it is made of; bounded, emptied when full (a few hundred keys at most
# in a real deployment: facilities x triggers x versions x decisions).
_AckKey = tuple[object, ...]
_TEMPLATES: dict[_AckKey, tuple[str, str, str, str]] = {}
_TEMPLATES_MAX = 1024


def build_ack(
    header: AckHeader,
    code: Literal["AA", "AE", "AR"],
    findings: Sequence[Finding],
    *,
    control_id: str,
    now: dt.datetime,
    receiving_application: str = "WPC",
    receiving_facility: str = "WPC",
) -> bytes:
    """An original- or enhanced-mode ACK for ``header``; segments end with CR.

    ``receiving_application``/``receiving_facility`` fill MSH-3/4 when the sender left
    its MSH-5/6 empty. ``control_id`` is our new MSH-10.
    """
    key = (
        header.delimiters, header.sending_application, header.sending_facility, header.receiving_application,
        header.receiving_facility, header.trigger, header.processing_id, header.version, header.accept_ack_type,
        header.character_set, code, tuple(findings), receiving_application, receiving_facility,
    )
    template = _TEMPLATES.get(key)
    if template is None:
        template = _ack_template(header, code, findings, receiving_application, receiving_facility)
        if len(_TEMPLATES) >= _TEMPLATES_MAX:
            _TEMPLATES.clear()
        _TEMPLATES[key] = template
    head, before_control_id, before_msa2, tail = template
    text = (head + _timestamp(now) + before_control_id + escape(control_id, header.delimiters)
            + before_msa2 + header.control_id + tail)
    return encode(text, header.charset)


def _ack_template(
    header: AckHeader,
    code: Literal["AA", "AE", "AR"],
    findings: Sequence[Finding],
    receiving_application: str,
    receiving_facility: str,
) -> tuple[str, str, str, str]:
    """The ACK's text in four pieces, to be joined with MSH-7, MSH-10 and MSA-2 between them."""
    d = header.delimiters
    fs, c = d.field, d.component
    version = _version_tuple(header.version, d)
    trigger = escape(header.trigger, d)
    if version >= (2, 4):
        msh9 = c.join(("ACK", trigger, "ACK"))
    elif version >= (2, 3):
        msh9 = c.join(("ACK", trigger)) if trigger else "ACK"
    else:
        msh9 = "ACK"
    msh_head = [
        "MSH",
        d.encoding_characters,
        header.receiving_application or escape(receiving_application, d),
        header.receiving_facility or escape(receiving_facility, d),
        header.sending_application,
        header.sending_facility,
    ]
    # MSH-7 (now), MSH-8 (empty), MSH-9, then MSH-10 (our new id)
    msh_tail = [header.processing_id, header.version or "2.5"]  # MSH-11, MSH-12
    if header.character_set:
        msh_tail += ["", "", "", "", "", header.character_set]  # MSH-13..17 empty, MSH-18
    msa_head = ["MSA", commit_code(code, header)]  # then MSA-2: the original MSH-10
    msa_tail: list[str] = []
    errors = [f for f in findings if f.severity == "E"]
    if version < (2, 4) and errors:
        msa_tail.append(escape(errors[0].text, d))  # MSA-3 text message, withdrawn in v2.4
    modern = version >= (2, 5)
    lines = [_err_segment(f, d, modern) for f in (findings if modern else errors)]
    return (
        fs.join(msh_head) + fs,
        fs + fs + msh9 + fs,
        fs + fs.join(msh_tail) + "\r" + fs.join(msa_head) + fs,
        "".join(fs + v for v in msa_tail) + "\r" + "".join(line + "\r" for line in lines),
    )


RETRANSMISSION_TEXT = "retransmission: stored acknowledgement"


def mark_retransmission(ack: bytes) -> bytes:
    """A stored ACK with MSA-3 (text message) set to `RETRANSMISSION_TEXT`.

    MSA-3 is withdrawn from v2.4 on but kept "for backward compatibility" (chapter 2,
    MSA segment), and it is the one place of an ACK meant for a human-readable note that
    every version has. Any text already there follows after "; ". Every other byte stays
    as stored: same MSH (MSH-7 and MSH-10 of the original answer), same MSA-1 and MSA-2,
    same ERR segments. Input that is not an ACK with an MSA segment comes back unchanged.
    """
    try:
        msg = Message.parse(ack)
    except Er7Error:
        return ack
    d = msg.delimiters
    lines: list[str] = []
    marked = False
    for seg in msg.segments:
        fields = list(seg.fields)
        if seg.name == "MSA" and not marked:
            fields += [""] * (4 - len(fields))
            note = escape(RETRANSMISSION_TEXT, d)
            fields[3] = f"{note}; {fields[3]}" if fields[3] else note
            marked = True
        # MSH keeps MSH-1 in fields[1]: the separator itself, not a field between two.
        lines.append(fields[0] + d.field + d.field.join(fields[2:]) if seg.name == "MSH" and len(fields) > 1
                     else d.field.join(fields))
    if not marked:
        return ack
    return encode("\r".join(lines) + "\r", msg.charset)
