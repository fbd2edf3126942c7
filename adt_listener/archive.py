"""Messages out of archive files, for the bulk import (`adt_listener.bulk`, `wpc import`).

The forms a hospital or an HIE hands over, told apart by their bytes, not their names:

* ER7 text: one message per file, or many (batch files with FHS/BHS envelopes, files
  joined with `cat`), cut as `wpc send` cuts them (`er7.MessageSplitter`: a message
  starts at each MSH line, envelope segments dropped, segments ended by CR);
* MLLP-framed dumps (the bytes an interface engine logged off the wire: ``<VT>message
  <FS><CR>`` one after another): each frame's payload is a message, as the live server
  takes it, byte for byte;
* either of these compressed with gzip (one member or several).

Files are read in chunks, never whole: an archive may hold millions of messages. Each
message comes with the offset just past it in the file's content (decompressed, for
gzip), which is where a resumed import starts reading again (`read_messages` with
``start``): at the beginning of the next message, whatever the form.
"""

from __future__ import annotations

import gzip
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

from adt_listener.er7 import MessageSplitter

__all__ = ["ArchiveFile", "Piece", "find_files", "read_messages"]

_CHUNK = 1 << 20
_GZIP_MAGIC = b"\x1f\x8b"
_VT, _FS_CR = b"\x0b", b"\x1c\r"
_LINE_BREAK = re.compile(rb"\r\n|\r|\n")
_BLANK = b" \t\r\n"  # not bytes.strip()'s whitespace, which holds VT, the MLLP start block


@dataclass(frozen=True, slots=True)
class ArchiveFile:
    """A file to import, and what tells a later run it is still the same file."""

    path: Path  # absolute
    size: int
    mtime_ns: int


@dataclass(frozen=True, slots=True)
class Piece:
    """What a file yields: a message, or a problem that is no message (``problem`` set)."""

    raw: bytes
    end: int  # offset in the file's (decompressed) content just past this piece
    read: int  # bytes of the file on disk read so far (progress)
    problem: str | None = None  # "truncated frame", "bytes outside frames"


def find_files(paths: Sequence[Path]) -> tuple[list[ArchiveFile], list[tuple[Path, str]]]:
    """The files named and those under the directories named (recursively, in name order,
    hidden ones skipped); and the paths that could not be used, each with the reason."""
    found: list[ArchiveFile] = []
    problems: list[tuple[Path, str]] = []
    seen: set[Path] = set()

    def add(path: Path) -> None:
        try:
            st = path.stat()
        except OSError as exc:
            problems.append((path, exc.strerror or type(exc).__name__))
            return
        absolute = path.resolve()
        if absolute not in seen:
            seen.add(absolute)
            found.append(ArchiveFile(absolute, st.st_size, st.st_mtime_ns))

    for path in paths:
        if path.is_dir():
            def unlisted(exc: OSError) -> None:
                problems.append((Path(exc.filename), exc.strerror or type(exc).__name__))

            for root, dirs, names in os.walk(path, onerror=unlisted):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in sorted(names):
                    if not name.startswith("."):
                        add(Path(root) / name)
        elif path.exists():
            add(path)
        else:
            problems.append((path, "no such file or directory"))
    return found, problems


def _open(path: Path) -> tuple[BinaryIO, BinaryIO]:
    """(content stream, the file on disk): gzip is recognised by its magic number."""
    disk = open(path, "rb")  # closed by the caller, with the stream
    try:
        compressed = disk.read(2) == _GZIP_MAGIC
        disk.seek(0)
        stream: BinaryIO = gzip.GzipFile(fileobj=disk, mode="rb") if compressed else disk  # type: ignore[assignment]
    except BaseException:
        disk.close()
        raise
    return stream, disk


def _form(stream: BinaryIO) -> Literal["mllp", "er7"]:
    head = stream.read(4096).lstrip(_BLANK)
    return "mllp" if head.startswith(_VT) else "er7"


def read_messages(file: ArchiveFile, start: int = 0) -> Iterator[Piece]:
    """The messages of ``file`` from content offset ``start`` (0, or an ``end`` it gave).

    Raises OSError (and gzip's errors: `EOFError`, `gzip.BadGzipFile`) when the file
    cannot be read; the pieces yielded before stay valid."""
    stream, disk = _open(file.path)
    with disk, stream:
        form = _form(stream)
        stream.seek(start)  # forward through gzip: decompressed and dropped
        chunks = _chunks(stream, disk)
        if form == "mllp":
            yield from _frames(chunks, start)
        else:
            yield from _er7(chunks, start)


def _chunks(stream: BinaryIO, disk: BinaryIO) -> Iterator[tuple[bytes, int]]:
    while data := stream.read(_CHUNK):
        yield data, disk.tell()


def _er7(chunks: Iterator[tuple[bytes, int]], start: int) -> Iterator[Piece]:
    splitter = MessageSplitter()
    buf = b""
    base = start  # content offset of buf[0]
    read = 0
    for data, read in chunks:
        buf += data
        pos = 0
        for m in _LINE_BREAK.finditer(buf):
            if m.end() == len(buf) and m.group() == b"\r":
                break  # a CR at the chunk's end may be the first half of a CRLF
            message = splitter.line(buf[pos : m.start()])
            if message is not None:
                yield Piece(message, base + pos, read)
            pos = m.end()
        buf = buf[pos:]
        base += pos
    if buf:
        message = splitter.line(_LINE_BREAK.sub(b"", buf))
        if message is not None:
            yield Piece(message, base, read)
    last = splitter.finish()
    if last is not None:
        yield Piece(last, base + len(buf), read)


def _frames(chunks: Iterator[tuple[bytes, int]], start: int) -> Iterator[Piece]:
    buf = b""
    base = start
    read = 0
    for data, read in chunks:
        buf += data
        pos = 0
        while True:
            begin = buf.find(_VT, pos)
            stray = buf[pos : begin if begin >= 0 else len(buf)]
            if stray.strip(_BLANK):
                yield Piece(b"", base + pos + len(stray), read, problem="bytes outside MLLP frames")
            if begin < 0:
                pos = len(buf)
                break
            pos = begin
            end = buf.find(_FS_CR, begin + 1)
            if end < 0:
                break  # the frame goes on in the next chunk
            pos = end + len(_FS_CR)
            yield Piece(buf[begin + 1 : end], base + pos, read)
        buf = buf[pos:]
        base += pos
    if buf.strip(_BLANK):
        # A frame cut off by the end of the file: the live server never answers one either.
        yield Piece(b"", base + len(buf), read, problem="truncated MLLP frame at the end of the file")

