"""POST /v1/adt refuses what is too big before reading it, and what is not HL7 v2 text.

A real listener; oversize requests go over a raw socket so the test controls when (and
whether) the body is sent: the 413 must come back while the client still holds the body.
"""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from adt_listener.synthetic import synthetic_feed
from tests.e2e.conftest import StartListener
from tests.e2e.helpers import control_id, msa_control_id

LIMIT = 100_000


async def http_exchange(port: int, head: bytes, body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    """Write ``head`` (and ``body``), then read the response until the server closes:
    (status, headers, body). Fails if the server keeps the connection open."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head + body)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 5)  # up to EOF: the refusal closes the connection
    finally:
        writer.close()
    head_part, _, rest = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head_part.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (h.split(":", 1) for h in header_lines)}
    return int(status_line.split()[1]), headers, rest


def request_head(content_type: str, framing: str) -> bytes:
    return (f"POST /v1/adt HTTP/1.1\r\nHost: listener\r\nContent-Type: {content_type}\r\n{framing}\r\n\r\n").encode()


async def test_declared_oversize_body_is_refused_before_it_is_sent(start_listener: StartListener) -> None:
    async with start_listener(http_max_body_bytes=LIMIT) as listener:
        # 50 MB announced, not a byte of it sent: the answer can only come from the header.
        head = request_head("x-application/hl7-v2+er7", f"Content-Length: {50 * 1024 * 1024}")
        status, headers, body = await http_exchange(listener.endpoints.http_port, head)
        assert status == 413
        assert headers["connection"] == "close"
        assert f"limit of {LIMIT} bytes" in json.loads(body)["detail"]


async def test_streamed_body_is_refused_once_past_the_limit(start_listener: StartListener) -> None:
    limit = 1_000
    async with start_listener(http_max_body_bytes=limit) as listener:
        # Chunked, no length announced: a chunk of exactly the limit, then one byte more,
        # and the body's last chunk never comes: only a server that counts while reading
        # can answer. (Small, so the server has read every byte sent when it closes: a
        # close with unread bytes resets the connection and the client may lose the 413.)
        body = f"{limit:x}\r\n".encode() + b"A" * limit + b"\r\n" + b"1\r\nA\r\n"
        head = request_head("application/hl7-v2", "Transfer-Encoding: chunked")
        status, headers, answer = await http_exchange(listener.endpoints.http_port, head, body)
        assert status == 413
        assert headers["connection"] == "close"
        assert f"limit of {limit} bytes" in json.loads(answer)["detail"]


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
