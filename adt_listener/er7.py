"""A small, fast reader for HL7 v2 messages in ER7 ("pipe and hat") encoding.

hl7apy builds a typed tree for every message (about 13 ms each); the listener only
needs a few dozen values per message, so this module splits the text the way HL7 v2
chapter 2 (section 2.5, "Message construction rules") describes and unescapes values
on demand. Parsing a typical ADT costs tens of microseconds.

What it accepts, and why:

* One message of raw bytes. A UTF-8 byte order mark and leading whitespace are
  dropped (editors and some interface engines add them). Segments end with CR, the
  terminator chapter 2 prescribes, but LF and CRLF are accepted too because files and
  HTTP bodies carry them; the final terminator may be missing; empty lines and lines
  of only whitespace are skipped; trailing blanks at the end of a segment line are not
  data (several feeds pad lines) and are removed.
* The first segment must be MSH. The field separator is the character right after
  "MSH" (MSH-1) and MSH-2 holds the component, repetition, escape and subcomponent
  characters, plus the truncation character from v2.7 on (chapter 2, MSH-1/MSH-2).
  Any printable characters may be used (sample 021 uses "^" as field separator), but
  they must be distinct, not alphanumeric, not whitespace: a message breaking that
  cannot be split reliably and raises `Er7Error` (table 0357 code 102 at MSH-1/MSH-2).
  Fewer than four encoding characters is refused rather than guessed.
* Character set (MSH-18, HL7 table 0211): the declared one when we know it and the
  bytes decode with it; otherwise UTF-8, and failing that windows-1252 with the five
  bytes cp1252 leaves undefined read as latin-1. Decoding never fails; the charset
  actually used is `Message.charset` so the ACK can be encoded the same way. This is the
  one decoding of ER7 bytes: `text_of` gives the same text to hl7apy (the conformance
  check, `wpc validate`), from a stored `Message.charset` or an MSH-18 name.
* Files and batches (`split_messages`): what `wpc send` and `wpc validate` read is cut into
  messages here, batch envelopes dropped (chapter 2, section 2.10.3).

Field numbering follows the standard: ``segment.field(n)`` is ``SEG-n``; for MSH,
``field(1)`` is the field separator itself and ``field(2)`` the encoding characters.
``field``/``repetitions`` return raw (still escaped) text; ``get`` unescapes
(chapter 2, section 2.7 "Use of escape sequences in text fields").
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass
from functools import lru_cache

from adt_listener.errors import Er7Error

__all__ = [
    "Delimiters", "Message", "MessageSplitter", "Segment", "codec_of", "decode", "encode", "escape",
    "split_messages", "text_of", "unescape",
]

_BOM = b"\xef\xbb\xbf"
_LEADING_WS = b" \t\r\n\x0b\x0c"

# MSH-18 (HL7 table 0211) → Python codec. Names not listed fall back to detection.
_CHARSETS: dict[str, str] = {
    "ASCII": "ascii",
    "8859/1": "latin-1",
    "8859/2": "iso8859-2",
    "8859/3": "iso8859-3",
    "8859/4": "iso8859-4",
    "8859/5": "iso8859-5",
    "8859/6": "iso8859-6",
    "8859/7": "iso8859-7",
    "8859/8": "iso8859-8",
    "8859/9": "iso8859-9",
    "8859/15": "iso8859-15",
    "UNICODE UTF-8": "utf-8",
    "UNICODE": "utf-8",
    "UTF-8": "utf-8",
    "GB 18030-2000": "gb18030",
    "KS X 1001": "euc_kr",
    "BIG-5": "big5",
    # Not table 0211 spellings, but seen in the wild:
    "ISO-8859-1": "latin-1",
    "WINDOWS-1252": "windows-1252",
    "CP1252": "windows-1252",
}

# windows-1252 as browsers read it: cp1252 where defined, latin-1 for 0x81 0x8D 0x8F 0x90 0x9D.
_CP1252_HIGH: dict[int, str] = {}
for _b in range(0x80, 0xA0):
    try:
        _CP1252_HIGH[_b] = bytes([_b]).decode("cp1252")
    except UnicodeDecodeError:
        pass
del _b


def _decode_windows_1252(data: bytes) -> str:
    text = data.decode("latin-1")
    if any(0x80 <= b < 0xA0 for b in data):
        text = text.translate(_CP1252_HIGH)
    return text


def _decode_as(data: bytes, codec: str) -> str:
    if codec == "windows-1252":
        return _decode_windows_1252(data)
    return data.decode(codec)


def decode(data: bytes, declared: str = "") -> tuple[str, str]:
    """Decode message bytes; returns (text, charset used). Never raises.

    ``declared`` is the MSH-18 value as sent (first repetition), '' when absent.
    """
    codec = _CHARSETS.get(declared.strip().upper()) if declared else None
    if codec is not None:
        try:
            return _decode_as(data, codec), codec
        except UnicodeDecodeError:
            pass  # the label lies (e.g. "ASCII" with latin-1 bytes): detect instead
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return _decode_windows_1252(data), "windows-1252"


def codec_of(charset: str) -> str | None:
    """The codec of an MSH-18 name (table 0211, and the spellings seen in the wild), or of a
    codec name as `Message.charset` holds it or a person types it ("latin-1"); None if neither."""
    label = charset.strip()
    if not label:
        return None
    codec = _CHARSETS.get(label.upper())
    if codec is not None:
        return codec
    try:
        return codecs.lookup(label).name
    except LookupError:
        return None


def text_of(raw: bytes, charset: str | None = None) -> str:
    """A whole message as text, for a reader other than ours (hl7apy): decoded with
    ``charset`` (`codec_of`) when the bytes fit it, else as `decode` does; a UTF-8 byte order
    mark dropped and every segment terminator made CR (chapter 2.5.1). Never fails."""
    codec = codec_of(charset) if charset else None
    text: str | None = None
    if codec is not None:
        try:
            text = _decode_as(raw, codec)
        except UnicodeDecodeError:
            text = None
    if text is None:
        text = decode(raw)[0]
    return text.lstrip("\ufeff").replace("\r\n", "\r").replace("\n", "\r")


def encode(text: str, charset: str) -> bytes:
    """Encode text for the wire in ``charset``; unencodable characters become '?'.

    Text decoded from a message encodes back to the same bytes; the windows-1252 holes
    we read as latin-1 are written back as the same single bytes.
    """
    try:
        return text.encode(charset)
    except (UnicodeEncodeError, LookupError):
        pass
    out = bytearray()
    for ch in text:
        try:
            out += ch.encode(charset)
        except (UnicodeEncodeError, LookupError):
            out += bytes([ord(ch)]) if ord(ch) < 256 else b"?"
    return bytes(out)


@dataclass(frozen=True, slots=True)
class Delimiters:
    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"
    truncation: str | None = None

    @property
    def encoding_characters(self) -> str:
        """MSH-2 as it should be written back."""
        return self.component + self.repetition + self.escape + self.subcomponent + (self.truncation or "")


DEFAULT_DELIMITERS = Delimiters()


def _bad_delimiter(ch: str) -> bool:
    return ch.isalnum() or ch.isspace() or not ch.isprintable()


_BAD_MSH1 = "MSH-1 field separator is missing or not a usable character"
_BAD_MSH2 = "MSH-2 encoding characters must be distinct, differ from MSH-1, not be letters, digits or spaces"


# A feed sends the same MSH-1/MSH-2 in every message: each pair is validated once and its
# `Delimiters` (immutable) shared. A refused pair raises every time (errors are not cached).
@lru_cache(maxsize=64)
def delimiters_from(field_separator: str, encoding_characters: str) -> Delimiters:
    """Validate MSH-1 and MSH-2 (chapter 2, MSH-1/MSH-2); raises `Er7Error`."""
    if len(field_separator) != 1 or _bad_delimiter(field_separator):
        raise Er7Error(_BAD_MSH1, code=102, location="MSH-1")
    enc = encoding_characters
    if len(enc) not in (4, 5):
        raise Er7Error("MSH-2 must hold 4 or 5 encoding characters", code=102, location="MSH-2")
    if len(set(enc)) != len(enc) or field_separator in enc or any(_bad_delimiter(c) for c in enc):
        raise Er7Error(_BAD_MSH2, code=102, location="MSH-2")
    return Delimiters(field_separator, enc[0], enc[1], enc[2], enc[3], enc[4] if len(enc) == 5 else None)


_SIMPLE_ESCAPES = {"F": "field", "S": "component", "T": "subcomponent", "R": "repetition", "E": "escape"}


def _hex_text(hexdigits: str, charset: str | None) -> str | None:
    try:
        data = bytes.fromhex(hexdigits)
    except ValueError:
        return None
    if not data:
        return None
    if charset is not None:
        try:
            return _decode_as(data, charset)
        except (UnicodeDecodeError, LookupError):
            pass
    return data.decode("latin-1")


def _escape_value(seq: str, d: Delimiters, charset: str | None) -> str | None:
    attr = _SIMPLE_ESCAPES.get(seq)
    if attr is not None:
        value: str = getattr(d, attr)
        return value
    if seq == "P" and d.truncation is not None:
        return d.truncation
    if seq in ("H", "N"):  # highlight on/off: display hints, not data
        return ""
    if seq == ".br":
        return "\n"
    if len(seq) > 1 and seq[0] == "X":
        return _hex_text(seq[1:], charset)
    return None


def unescape(text: str, d: Delimiters, *, charset: str | None = None) -> str:
    """Resolve the escape sequences of chapter 2, section 2.7.

    \\F\\ \\S\\ \\T\\ \\R\\ \\E\\ (and \\P\\ from v2.7) give the delimiter back, \\Xhh..\\ is
    bytes decoded with ``charset`` (latin-1 when that fails), \\.br\\ is a line break,
    \\H\\ and \\N\\ are dropped; any other sequence, or an escape character without its
    closing partner, is kept as sent.
    """
    e = d.escape
    if e not in text:
        return text
    out: list[str] = []
    i = 0
    n = len(text)
    while i < n:
        j = text.find(e, i)
        if j < 0:
            out.append(text[i:])
            break
        out.append(text[i:j])
        k = text.find(e, j + 1)
        if k < 0:
            out.append(text[j:])
            break
        value = _escape_value(text[j + 1 : k], d, charset)
        out.append(text[j : k + 1] if value is None else value)
        i = k + 1
    return "".join(out)


@lru_cache(maxsize=64)
def _escape_table(d: Delimiters) -> dict[str, str]:
    table = {
        d.escape: f"{d.escape}E{d.escape}",
        d.field: f"{d.escape}F{d.escape}",
        d.component: f"{d.escape}S{d.escape}",
        d.repetition: f"{d.escape}R{d.escape}",
        d.subcomponent: f"{d.escape}T{d.escape}",
        "\n": f"{d.escape}.br{d.escape}",
        "\r": f"{d.escape}X0D{d.escape}",
    }
    if d.truncation is not None:
        table[d.truncation] = f"{d.escape}P{d.escape}"
    return table


def escape(text: str, d: Delimiters) -> str:
    """Escape text so that it can be placed inside one ER7 field component.

    Inverse of `unescape`: LF becomes \\.br\\ and CR \\X0D\\ (a raw CR would end the
    segment).
    """
    table = _escape_table(d)  # per delimiter set: every ACK escapes a few fields
    if not any(c in text for c in table):
        return text
    return "".join(table.get(c, c) for c in text)


class Segment:
    """One segment; ``fields[n]`` is SEG-n, ``fields[0]`` the segment id.

    A field is split into repetitions and components once, the first time it is read,
    and kept: the normalizer reads several components of the same
    field (PID-3, PID-11, PV1-3 ...), and re-splitting the field text for each of them
    was most of the cost of a message. ``fields`` must not be changed after reading.
    """

    __slots__ = ("_esc", "_is_msh", "_split", "_sub", "charset", "delimiters", "fields", "name")

    def __init__(
        self, name: str, fields: list[str], delimiters: Delimiters, charset: str | None = None
    ) -> None:
        self.name = name
        self.fields = fields
        self.delimiters = delimiters
        self.charset = charset
        self._is_msh = name == "MSH"
        self._split: dict[int, list[list[str]]] = {}
        self._sub = delimiters.subcomponent
        self._esc = delimiters.escape

    def __repr__(self) -> str:  # ids only: field values may be PHI
        return f"<Segment {self.name} ({len(self.fields) - 1} fields)>"

    def field(self, n: int) -> str:
        """Raw (still escaped) text of field n, '' if absent."""
        fields = self.fields
        return fields[n] if 0 <= n < len(fields) else ""

    def repetitions(self, n: int) -> list[str]:
        """Raw repetitions of field n ([] when the field is empty)."""
        f = self.field(n)
        if not f:
            return []
        if self._is_msh and n <= 2:
            return [f]
        return f.split(self.delimiters.repetition)

    def repetition_count(self, n: int) -> int:
        """How many repetitions field n has (0 when it is empty)."""
        if self._is_msh and n <= 2:
            return 1 if self.field(n) else 0
        parts = self._split.get(n)
        return len(parts if parts is not None else self._split_field(n))

    def _split_field(self, n: int) -> list[list[str]]:
        """Field n as repetitions of components, raw (subcomponents are cut on demand)."""
        fields = self.fields
        f = fields[n] if 0 <= n < len(fields) else ""
        if not f:
            parts: list[list[str]] = []
        elif self._is_msh and n <= 2:
            parts = [[f]]  # MSH-1/MSH-2 are the delimiters themselves, never split
        else:
            d = self.delimiters
            comp = d.component
            if d.repetition not in f:  # the usual case: no repetitions, no list comprehension
                parts = [f.split(comp) if comp in f else [f]]
            else:
                parts = [r.split(comp) if comp in r else [r] for r in f.split(d.repetition)]
        self._split[n] = parts
        return parts

    def _raw(self, n: int, rep: int, comp: int, sub: int) -> str:
        if rep < 1 or comp < 1 or sub < 1:
            return ""
        parts = self._split.get(n)
        if parts is None:
            parts = self._split_field(n)
        if rep > len(parts):
            return ""
        comps = parts[rep - 1]
        if comp > len(comps):
            return ""
        value = comps[comp - 1]
        s = self.delimiters.subcomponent
        if s in value and not (self._is_msh and n <= 2):
            subs = value.split(s)
            return subs[sub - 1] if sub <= len(subs) else ""
        return value if sub == 1 else ""

    def get(self, n: int, rep: int = 1, comp: int = 1, sub: int = 1) -> str:
        """Unescaped value of SEG-n[rep].comp.sub; '' when absent."""
        value = self._raw(n, rep, comp, sub)
        if not value:
            return value
        if self._is_msh and n <= 2:  # MSH-1/MSH-2 are the delimiters themselves
            return value
        d = self.delimiters
        if d.escape in value:
            return unescape(value, d, charset=self.charset)
        return value

    def value(self, n: int, rep: int = 1, comp: int = 1, sub: int = 1) -> str | None:
        """`get` stripped of blanks; None when empty or the explicit null ``""``.

        Chapter 2.5.3: ``""`` means "delete the value", so it carries no value either.
        The normalizer reads ~70 values per message through here, so the common case
        (field already split, no subcomponent, no escape) is kept to a few operations;
        everything else takes `_value_slow` (MSH-2 too: it holds the escape character).
        """
        parts = self._split.get(n)
        if parts is None:
            parts = self._split_field(n)
        if 0 < rep <= len(parts):
            comps = parts[rep - 1]
            if 0 < comp <= len(comps):
                value = comps[comp - 1]
                if value:
                    if sub != 1 or self._sub in value or self._esc in value:
                        return self._value_slow(n, rep, comp, sub)
                    value = value.strip()
                    if value and value != '""':
                        return value
        return None

    def _value_slow(self, n: int, rep: int, comp: int, sub: int) -> str | None:
        value = self.get(n, rep, comp, sub).strip()
        return None if not value or value == '""' else value


_PATH = re.compile(r"([A-Z][A-Z0-9]{2})-(\d+)(?:\[(\d+)\])?(?:\.(\d+))?(?:\.(\d+))?")


@lru_cache(maxsize=512)
def _parse_path(path: str) -> tuple[str, int, int, int, int]:
    m = _PATH.fullmatch(path)
    if m is None:
        raise ValueError(f"not an HL7 field path: {path!r} (expected e.g. 'PID-3[2].4.1')")
    seg, field, rep, comp, sub = m.groups()
    return seg, int(field), int(rep or 1), int(comp or 1), int(sub or 1)


class Message:
    """A parsed ER7 message: delimiters, segments (empty lines dropped), charset used."""

    __slots__ = ("_by_name", "charset", "delimiters", "segments")

    def __init__(self, delimiters: Delimiters, segments: list[Segment], charset: str) -> None:
        self.delimiters = delimiters
        self.segments = segments
        self.charset = charset
        by_name: dict[str, list[Segment]] = {}
        for seg in segments:
            by_name.setdefault(seg.name, []).append(seg)
        self._by_name = by_name

    def __repr__(self) -> str:
        return f"<Message {' '.join(s.name for s in self.segments)} charset={self.charset}>"

    @classmethod
    def parse(cls, raw: bytes) -> Message:
        """Parse one message; raises `Er7Error` when it is not readable ER7."""
        data = raw[3:] if raw.startswith(_BOM) else raw
        data = data.lstrip(_LEADING_WS)
        if not data.startswith(b"MSH"):
            raise Er7Error("the first segment is not MSH", code=100, location="MSH")
        if len(data) < 4 or data[3] >= 0x80 or _bad_delimiter(chr(data[3])):
            raise Er7Error(_BAD_MSH1, code=102, location="MSH-1")
        fs_byte = data[3:4]
        # MSH-18 is needed before decoding: read it from the bytes of the first line.
        end = len(data)
        for term in (b"\r", b"\n"):
            pos = data.find(term)
            if 0 <= pos < end:
                end = pos
        header = data[:end].split(fs_byte)
        declared = ""
        if len(header) > 17 and len(header[1]) >= 2:
            declared = header[17].split(header[1][1:2])[0].decode("latin-1")
        text, charset = decode(data, declared)

        if "\n" in text:
            text = text.replace("\r\n", "\r").replace("\n", "\r")
        lines = text.split("\r")
        first = lines[0].rstrip(" \t")
        fs = first[3]
        msh_fields = first[4:].split(fs)
        d = delimiters_from(fs, msh_fields[0])

        segments = [Segment("MSH", ["MSH", fs, *msh_fields], d, charset)]
        for line in lines[1:]:
            line = line.rstrip(" \t\x0b\x0c")
            if not line:
                continue
            fields = line.split(fs)
            name = fields[0]
            if name == "MSH":  # keep MSH numbering if a second header shows up
                fields = ["MSH", fs, *line[4:].split(fs)]
            segments.append(Segment(name, fields, d, charset))
        return cls(d, segments, charset)

    def segment(self, name: str, index: int = 0) -> Segment | None:
        """The index-th (0-based) segment called ``name``, or None."""
        found = self._by_name.get(name)
        if found is None or not 0 <= index < len(found):
            return None
        return found[index]

    def all(self, name: str) -> list[Segment]:
        return list(self._by_name.get(name, ()))

    def get(self, path: str) -> str:
        """Unescaped value at a path such as "PID-3", "PID-3[2].4", "PID-11.1.2"; '' if absent.

        Reads the first segment of that name.
        """
        seg_name, field, rep, comp, sub = _parse_path(path)
        seg = self.segment(seg_name)
        if seg is None:
            return ""
        return seg.get(field, rep, comp, sub)


# --- files and batches -------------------------------------------------------------------

_LINE_BREAK = re.compile(rb"\r\n|\r|\n")
# Batch envelope segments (HL7 v2 chapter 2, section 2.10.3): a file or batch header or
# trailer wraps the messages of a batch file but is not part of any message.
_ENVELOPE = frozenset({b"FHS", b"BHS", b"BTS", b"FTS"})


def split_messages(data: bytes) -> list[bytes]:
    """Split the contents of an HL7 file into messages, each segment ended by CR.

    A file may hold one message or many (a batch file, or files joined with `cat`).
    A new message starts at each line beginning with the segment id MSH; batch
    envelope segments (FHS, BHS, BTS, FTS) are dropped. Lines may end with CR, LF
    or CRLF, because files are edited on every platform, but HL7 v2 (chapter 2,
    section 2.5.3) terminates a segment with CR alone, so that is what each message
    gets, including after its last segment. Empty and whitespace-only lines are not
    segments and are dropped. A UTF-8 byte order mark at the start of a line (the
    start of the file, or of a file joined with `cat`) is dropped. All other bytes
    are kept as they are: nothing is decoded, so a message in latin-1 is sent in
    latin-1, as the receiver's MSH-18 handling expects.

    Lines before the first MSH (other than an envelope) form a message of their own,
    rather than being dropped silently: the receiver is the judge of a malformed
    message, and will answer it with AR.
    """
    splitter = MessageSplitter()
    messages = [m for line in _LINE_BREAK.split(data) if (m := splitter.line(line)) is not None]
    last = splitter.finish()
    return [*messages, last] if last is not None else messages


class MessageSplitter:
    """`split_messages` one line at a time, for files too large to hold (`wpc import`).

    Feed each line without its line break; `line` returns a message when the line
    starts the next one (an MSH), `finish` returns the last. The rules are
    `split_messages`'s, which is built on this class.
    """

    __slots__ = ("_current",)

    def __init__(self) -> None:
        self._current: list[bytes] = []

    @property
    def pending(self) -> bool:
        """Whether lines of a message not yet returned are held."""
        return bool(self._current)

    def line(self, raw_line: bytes) -> bytes | None:
        line = raw_line[len(_BOM) :] if raw_line.startswith(_BOM) else raw_line
        if not line.strip():
            return None
        segment_id = _segment_id(line)
        if segment_id in _ENVELOPE:
            return None
        done = None
        if segment_id == b"MSH" and self._current:
            done = self.finish()
        self._current.append(line)
        return done

    def finish(self) -> bytes | None:
        if not self._current:
            return None
        message = b"\r".join(self._current) + b"\r"
        self._current = []
        return message


def _segment_id(line: bytes) -> bytes | None:
    """The three-character segment id, or None when the line does not start with one.

    The id is followed by the field separator, which is never alphanumeric (chapter 2,
    MSH-1), so "MSHX|..." is not an MSH segment.
    """
    if len(line) > 3 and line[3:4].isalnum():
        return None
    return line[:3]
