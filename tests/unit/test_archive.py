"""Archive files for `wpc import` (`adt_listener.archive`): every form gives the messages
`wpc send` would send (ER7) or the live server would take (MLLP), and reading again from
any offset it gave yields exactly the rest, also across chunk boundaries."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from adt_listener import archive
from adt_listener.archive import ArchiveFile, find_files, read_messages
from adt_listener.er7 import split_messages
from adt_listener.mllp import encode
from bench.synthetic import synthetic_feed

MESSAGES = synthetic_feed(12, seed=3)


def _file(path: Path, data: bytes) -> ArchiveFile:
    path.write_bytes(data)
    st = path.stat()
    return ArchiveFile(path.resolve(), st.st_size, st.st_mtime_ns)


def _forms() -> dict[str, bytes]:
    crlf = [m.replace(b"\r", b"\r\n") for m in MESSAGES]
    batch = (b"FHS|^~\\&|X\r\nBHS|^~\\&|X\r\n" + b"".join(crlf) + b"BTS|12\r\nFTS|1\r\n")
    mllp = b"".join(encode(m) + b"\n" for m in MESSAGES)
    return {
        "batch": batch,
        "lf": b"".join(m.replace(b"\r", b"\n") for m in MESSAGES),
        "mllp": mllp,
        "batch.gz": gzip.compress(batch),
        "mllp.gz": gzip.compress(mllp[: len(mllp) // 2]) + gzip.compress(mllp[len(mllp) // 2 :]),  # two members
    }


@pytest.mark.parametrize("chunk", [5, 64, 1 << 20])
@pytest.mark.parametrize("form", list(_forms()))
def test_each_form_gives_the_messages_and_resumes_at_any_offset(
    tmp_path: Path, form: str, chunk: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(archive, "_CHUNK", chunk)  # tiny chunks cut CRLFs and frames in two
    f = _file(tmp_path / form, _forms()[form])
    pieces = list(read_messages(f))
    assert [p.raw for p in pieces] == MESSAGES
    assert all(p.problem is None for p in pieces)
    ends = [p.end for p in pieces]
    assert ends == sorted(ends) and len(set(ends)) == len(ends)
    for n, piece in enumerate(pieces):
        assert [p.raw for p in read_messages(f, piece.end)] == MESSAGES[n + 1 :], (form, n)


def test_er7_is_cut_as_wpc_send_cuts_it(tmp_path: Path, samples_dir: Path) -> None:
    for path in sorted((samples_dir / "messages").glob("*.hl7"))[:40]:
        data = path.read_bytes()
        assert [p.raw for p in read_messages(_file(tmp_path / "m", data))] == split_messages(data), path.name


def test_mllp_frames_are_taken_byte_for_byte_and_problems_named(tmp_path: Path) -> None:
    lf_message = MESSAGES[0].replace(b"\r", b"\n")  # the server does not rewrite a frame's payload
    data = encode(lf_message) + b"junk" + encode(MESSAGES[1]) + b"\x0bMSH|^~\\&|cut off"
    pieces = list(read_messages(_file(tmp_path / "d", data)))
    assert [(p.raw, p.problem) for p in pieces] == [
        (lf_message, None),
        (b"", "bytes outside MLLP frames"),
        (MESSAGES[1], None),
        (b"", "truncated MLLP frame at the end of the file"),
    ]


def test_find_files_walks_directories_in_order_and_names_missing_paths(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / ".hidden").mkdir()
    for name in ("b/2.hl7", "b/1.hl7", "a.hl7", ".hidden/x.hl7", "b/.swp"):
        (tmp_path / name).write_bytes(MESSAGES[0])
    files, problems = find_files([tmp_path, tmp_path / "a.hl7", tmp_path / "nope"])
    assert [f.path.relative_to(tmp_path.resolve()).as_posix() for f in files] == ["a.hl7", "b/1.hl7", "b/2.hl7"]
    assert problems == [(tmp_path / "nope", "no such file or directory")]


def test_a_damaged_gzip_raises_after_what_it_could_read(tmp_path: Path) -> None:
    data = gzip.compress(b"".join(MESSAGES))
    f = _file(tmp_path / "bad.gz", data[: len(data) - 40])
    with pytest.raises((EOFError, OSError)):
        list(read_messages(f))
