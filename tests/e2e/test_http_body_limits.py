"""POST /v1/adt refuses what is too big before reading it, and what is not HL7 v2 text.

A real listener; oversize requests go over a raw socket so the test controls when (and
whether) the body is sent: the 413 must come back while the client still holds the body
(or its end).
"""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from bench.synthetic import synthetic_feed
from tests.e2e.conftest import StartListener
from tests.e2e.helpers import control_id, msa_control_id

LIMIT = 100_000


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response with a Content-Length: (status, headers, body)."""
    async with asyncio.timeout(5):
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        status_line, *header_lines = head.strip().split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, v in (h.split(":", 1) for h in header_lines)}
        body = await reader.readexactly(int(headers["content-length"]))
    return int(status_line.split()[1]), headers, body


def request_head(content_type: str, framing: str) -> bytes:
    return (f"POST /v1/adt HTTP/1.1\r\nHost: listener\r\nContent-Type: {content_type}\r\n{framing}\r\n\r\n").encode()


async def test_declared_oversize_body_is_refused_before_it_is_sent(start_listener: StartListener) -> None:
    message = synthetic_feed(1, seed=604)[0]
    async with start_listener(http_max_body_bytes=LIMIT) as listener:
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.endpoints.http_port)
        try:
            # 50 MB announced, not a byte of it sent: the answer can only come from the header.
            size = 50 * 1024 * 1024
            writer.write(request_head("x-application/hl7-v2+er7", f"Content-Length: {size}"))
            status, _, body = await read_response(reader)
            assert status == 413
            assert json.loads(body)["detail"] == (
                f"body of {size} bytes exceeds the limit of {LIMIT} bytes (one HL7 v2 message)"
            )
            # What is sent after the answer is dropped, not kept: the connection goes on.
            writer.write(b"A" * size)
            writer.write(request_head("x-application/hl7-v2+er7", f"Content-Length: {len(message)}") + message)
            status, _, ack = await read_response(reader)
            assert status == 200 and msa_control_id(ack) == control_id(message)
        finally:
            writer.close()


async def test_streamed_body_is_refused_once_past_the_limit(start_listener: StartListener) -> None:
    async with start_listener(http_max_body_bytes=LIMIT) as listener:
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.endpoints.http_port)
        try:
            # Chunked, no length announced: two chunks of 64 KiB pass the limit, and the
            # body's last chunk never comes: only a server that counts while reading answers.
            writer.write(request_head("application/hl7-v2", "Transfer-Encoding: chunked"))
            for _ in range(2):
                writer.write(b"10000\r\n" + b"A" * 65_536 + b"\r\n")
            status, _, answer = await read_response(reader)
            assert status == 413
            assert json.loads(answer)["detail"] == f"body exceeds the limit of {LIMIT} bytes (one HL7 v2 message)"
        finally:
            writer.close()


async def test_content_types_that_are_not_hl7_v2_text_get_415_and_the_hl7_ones_are_taken(
    start_listener: StartListener,
) -> None:
    feed = iter(synthetic_feed(5, seed=601))
    async with start_listener() as listener:
        base = f"http://127.0.0.1:{listener.endpoints.http_port}"
        async with httpx.AsyncClient(base_url=base) as http:
            for refused_type in ("application/json", "application/x-www-form-urlencoded", "text/html"):
                answer = await http.post("/v1/adt", content=next(iter(synthetic_feed(1, seed=602))),
                                         headers={"content-type": refused_type})
                assert answer.status_code == 415, refused_type
                detail = answer.json()["detail"]
                assert refused_type in detail and "x-application/hl7-v2+er7" in detail and "text/plain" in detail
            for accepted_type in ("x-application/hl7-v2+er7", "application/hl7-v2; charset=utf-8",
                                  "Application/EDI-HL7", "text/plain;charset=ISO-8859-1"):
                message = next(feed)
                answer = await http.post("/v1/adt", content=message, headers={"content-type": accepted_type})
                assert answer.status_code == 200, accepted_type
                assert msa_control_id(answer.content) == control_id(message)


@pytest.mark.parametrize("framing", ["length", "chunked"])
async def test_a_body_within_the_limit_is_taken_either_way(start_listener: StartListener, framing: str) -> None:
    message = synthetic_feed(1, seed=603)[0]
    async with start_listener(http_max_body_bytes=len(message)) as listener:
        base = f"http://127.0.0.1:{listener.endpoints.http_port}"
        async with httpx.AsyncClient(base_url=base) as http:

            async def stream() -> object:
                yield message[:100]
                yield message[100:]

            content = message if framing == "length" else stream()
            answer = await http.post("/v1/adt", content=content,  # type: ignore[arg-type]
                                     headers={"content-type": "x-application/hl7-v2+er7"})
            assert answer.status_code == 200
            assert msa_control_id(answer.content) == control_id(message)
