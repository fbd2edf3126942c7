"""TLS for MLLP: the server context, and why a handshake was refused.

A hospital whose feed stops calls to ask why; "the client saw EOF" is no answer. Every
refused handshake is therefore classified (`refusal_reason`), logged with the peer
address, the reason, OpenSSL's verification message and, when the client presented a
certificate, its subject and expiry (`describe`), and counted in
`wpc_mllp_tls_refused_total{reason}`:

| reason | what the client did |
|---|---|
| no_client_cert | mutual TLS, but it sent no certificate |
| unknown_ca | its certificate is not signed by WPC_TLS_CLIENT_CA_FILE (or is self-signed) |
| expired | its certificate's notAfter has passed |
| protocol_version | it offered only TLS 1.0/1.1 (or SSL); the minimum is TLS 1.2 |
| not_tls | it spoke plain TCP (MLLP, HTTP) to the TLS port |
| handshake_timeout | it did not complete the handshake in time (or sent nothing) |
| unknown_cn | the handshake succeeded, but no sender in WPC_SENDERS_FILE has its CN |
| other | anything else (the message is logged) |

Why the certificate is read from the handshake: when verification fails OpenSSL ends
the handshake before Python may ask for the peer certificate (`getpeercert` needs a
finished handshake; `get_unverified_chain` arrives in Python 3.13). So the context's
message callback (`SSLContext._msg_callback`, CPython's hook behind `openssl s_client
-msg`, present since 3.8) sees the client's Certificate handshake message, already
decrypted under TLS 1.3, and keeps the first certificate's subject and notAfter on the
`SSLObject`, whose `do_handshake` attaches them to the error it raises. Verification
itself is left to OpenSSL, unchanged. Where the hook is missing, refusals are still
logged and counted, without the subject.
"""

from __future__ import annotations

import datetime as dt
import logging
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

REASONS = (
    "no_client_cert", "unknown_ca", "expired", "protocol_version", "not_tls", "handshake_timeout", "unknown_cn",
    "other",
)

# OpenSSL X509_V_ERR_* codes (include/openssl/x509_vfy.h) that mean "not our CA".
_UNKNOWN_CA_CODES = frozenset({
    2,  # UNABLE_TO_GET_ISSUER_CERT
    18,  # DEPTH_ZERO_SELF_SIGNED_CERT
    19,  # SELF_SIGNED_CERT_IN_CHAIN
    20,  # UNABLE_TO_GET_ISSUER_CERT_LOCALLY
    21,  # UNABLE_TO_VERIFY_LEAF_SIGNATURE
})
_CERT_HAS_EXPIRED = 10
# OpenSSL SSL_R_* reason names (ssl.SSLError.reason).
_PROTOCOL_VERSION = frozenset({
    "UNSUPPORTED_PROTOCOL", "NO_PROTOCOLS_AVAILABLE", "TLSV1_ALERT_PROTOCOL_VERSION", "VERSION_TOO_LOW",
    "WRONG_SSL_VERSION", "UNKNOWN_PROTOCOL",
})
_NOT_TLS = frozenset({"WRONG_VERSION_NUMBER", "HTTP_REQUEST", "HTTPS_PROXY_REQUEST", "PACKET_LENGTH_TOO_LONG"})
_NO_CLIENT_CERT = frozenset({"PEER_DID_NOT_RETURN_A_CERTIFICATE", "PEER_DID_NOT_RETURN_A_CERTIFICATE_SIGNED"})


@dataclass(frozen=True)
class PeerCertificate:
    subject: str  # "CN=st-mary-mirth,O=St Mary" (attributes we know, in certificate order)
    not_after: dt.datetime | None


def refusal_reason(exc: BaseException) -> str:
    """The `wpc_mllp_tls_refused_total` reason for a failed server-side handshake."""
    if isinstance(exc, TimeoutError):
        return "handshake_timeout"
    if isinstance(exc, ssl.SSLCertVerificationError):
        if exc.verify_code == _CERT_HAS_EXPIRED:
            return "expired"
        if exc.verify_code in _UNKNOWN_CA_CODES:
            return "unknown_ca"
        return "other"
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or ""
        if reason in _NO_CLIENT_CERT:
            return "no_client_cert"
        if reason in _PROTOCOL_VERSION:
            return "protocol_version"
        if reason in _NOT_TLS:
            return "not_tls"
        return "other"
    if isinstance(exc, ConnectionAbortedError) and "handshake" in str(exc):
        return "handshake_timeout"  # the event loop's own ssl_handshake_timeout
    return "other"


PEER_CLOSED = "the peer closed the connection during the handshake"


def refusal_detail(exc: BaseException) -> str:
    """What OpenSSL said, for the log line (no message content ever reaches a handshake)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return str(exc.reason or exc.strerror or type(exc).__name__).lower().replace("_", " ")
    if isinstance(exc, TimeoutError):
        return "no complete handshake in time"
    if isinstance(exc, ConnectionResetError | BrokenPipeError):
        return PEER_CLOSED
    return type(exc).__name__


def peer_certificate_of(exc: BaseException) -> PeerCertificate | None:
    """The certificate the client presented before this handshake failed, if it sent one."""
    found = getattr(exc, "wpc_peer_certificate", None)
    return found if isinstance(found, PeerCertificate) else None


def from_getpeercert(cert: dict[str, Any] | None) -> PeerCertificate | None:
    """`SSLObject.getpeercert()` of a finished handshake, as a PeerCertificate."""
    if not cert:
        return None
    parts = [f"{_SHORT_BY_LONG.get(k, k)}={v}" for rdn in cert.get("subject", ()) for k, v in rdn]
    not_after = None
    if "notAfter" in cert:
        not_after = dt.datetime.fromtimestamp(ssl.cert_time_to_seconds(cert["notAfter"]), dt.UTC)
    return PeerCertificate(_clean(",".join(parts)), not_after)


def describe(cert: PeerCertificate | None) -> str:
    if cert is None:
        return "no client certificate seen"
    expiry = cert.not_after.strftime("%Y-%m-%dT%H:%M:%SZ") if cert.not_after else "?"
    return f"subject {cert.subject!r}, expires {expiry}"


# --- the server context ---------------------------------------------------------------------


class _RecordingSSLObject(ssl.SSLObject):
    """An SSLObject that hands the client certificate seen in the handshake to the error
    ending it (see the module docstring)."""

    wpc_peer_certificate: PeerCertificate | None = None

    def do_handshake(self) -> None:
        try:
            super().do_handshake()
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            raise  # the handshake goes on
        except ssl.SSLError as exc:
            exc.wpc_peer_certificate = self.wpc_peer_certificate  # type: ignore[attr-defined]
            raise


def _on_tls_message(conn: object, direction: str, version: object, content_type: object, msg_type: object,
                    data: bytes) -> None:
    # Called by OpenSSL for every record and handshake message: keep it cheap, never raise.
    if direction != "read" or msg_type != _CERTIFICATE or content_type != _HANDSHAKE:
        return
    if isinstance(conn, _RecordingSSLObject) and conn.wpc_peer_certificate is None:
        try:
            conn.wpc_peer_certificate = _first_certificate(data, tls13=version == ssl.TLSVersion.TLSv1_3)
        except (ValueError, IndexError):
            pass  # a malformed certificate: OpenSSL refuses it and says why


# The callback's enums are private too: without them, no callback.
_content_types: Any = getattr(ssl, "_TLSContentType", None)
_message_types: Any = getattr(ssl, "_TLSMessageType", None)
_HANDSHAKE: Any = _content_types.HANDSHAKE if _content_types is not None else None
_CERTIFICATE: Any = _message_types.CERTIFICATE if _message_types is not None else None


def server_context(cert_file: Path, key_file: Path | None, client_ca_file: Path | None) -> ssl.SSLContext:
    """TLS 1.2 or later; with a client CA, a client certificate signed by it is required."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cert_file), str(key_file or cert_file))
    if client_ca_file is not None:
        ctx.load_verify_locations(cafile=str(client_ca_file))
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.sslobject_class = _RecordingSSLObject
        if _HANDSHAKE is not None and _CERTIFICATE is not None and hasattr(ctx, "_msg_callback"):
            ctx._msg_callback = _on_tls_message
    return ctx


# --- reading a certificate out of the handshake (DER, RFC 5280) -------------------------------

# Attribute types shown in a subject (X.520, RFC 4519): OID body bytes → short name.
_ATTRIBUTE_NAMES = {
    bytes([0x55, 0x04, 0x03]): "CN",
    bytes([0x55, 0x04, 0x06]): "C",
    bytes([0x55, 0x04, 0x07]): "L",
    bytes([0x55, 0x04, 0x08]): "ST",
    bytes([0x55, 0x04, 0x0A]): "O",
    bytes([0x55, 0x04, 0x0B]): "OU",
}
_SHORT_BY_LONG = {
    "commonName": "CN", "countryName": "C", "localityName": "L", "stateOrProvinceName": "ST",
    "organizationName": "O", "organizationalUnitName": "OU",
}
_MAX_SUBJECT = 200


def _tlv(buf: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, start of the value, end of the value) of the DER element at ``pos``."""
    tag = buf[pos]
    length = buf[pos + 1]
    start = pos + 2
    if length & 0x80:
        n = length & 0x7F
        if n == 0 or n > 4:
            raise ValueError("unsupported DER length")
        length = int.from_bytes(buf[start : start + n], "big")
        start += n
    end = start + length
    if end > len(buf):
        raise ValueError("DER element runs past its container")
    return tag, start, end


def _children(buf: bytes, start: int, end: int) -> list[tuple[int, int, int]]:
    out = []
    pos = start
    while pos < end:
        tag, s, e = _tlv(buf, pos)
        out.append((tag, s, e))
        pos = e
    return out


def _clean(text: str) -> str:
    return "".join(c if c.isprintable() else "?" for c in text)[:_MAX_SUBJECT]


def _name(der: bytes, start: int, end: int) -> str:
    parts = []
    for _, set_start, set_end in _children(der, start, end):  # RelativeDistinguishedName (SET)
        for _, seq_start, seq_end in _children(der, set_start, set_end):  # AttributeTypeAndValue
            (_, oid_s, oid_e), (_, val_s, val_e), *_ = _children(der, seq_start, seq_end)
            short = _ATTRIBUTE_NAMES.get(der[oid_s:oid_e])
            if short is not None:
                parts.append(f"{short}={der[val_s:val_e].decode('utf-8', 'replace')}")
    return _clean(",".join(parts))


def _time(der: bytes, tag: int, start: int, end: int) -> dt.datetime:
    text = der[start:end].decode("ascii")
    if tag == 0x17:  # UTCTime YYMMDDHHMMSSZ; RFC 5280 4.1.2.5.1: YY < 50 is 20YY
        year = int(text[:2])
        text = f"{2000 + year if year < 50 else 1900 + year}{text[2:]}"
    elif tag != 0x18:  # GeneralizedTime YYYYMMDDHHMMSSZ
        raise ValueError("not a time")
    return dt.datetime.strptime(text, "%Y%m%d%H%M%SZ").replace(tzinfo=dt.UTC)


def certificate_info(der: bytes) -> PeerCertificate:
    """Subject and notAfter of one DER X.509 certificate."""
    _, cert_s, cert_e = _tlv(der, 0)
    _, tbs_s, tbs_e = _children(der, cert_s, cert_e)[0]
    fields = _children(der, tbs_s, tbs_e)
    if fields and fields[0][0] == 0xA0:  # [0] EXPLICIT version
        fields = fields[1:]
    # serialNumber, signature, issuer, validity, subject, ...
    _, val_s, val_e = fields[3]
    _, (after_tag, after_s, after_e) = _children(der, val_s, val_e)[:2]
    _, subj_s, subj_e = fields[4]
    return PeerCertificate(_name(der, subj_s, subj_e), _time(der, after_tag, after_s, after_e))


def _first_certificate(message: bytes, *, tls13: bool) -> PeerCertificate | None:
    """The leaf of a TLS Certificate handshake message (type, 3-byte length, body).

    TLS 1.2 (RFC 5246 7.4.2): certificate_list<0..2^24-1> of ASN.1Cert<1..2^24-1>.
    TLS 1.3 (RFC 8446 4.4.2): certificate_request_context<0..255> first, then the list,
    each entry followed by its extensions. The leaf comes first in both; an empty list
    (no certificate) gives None.
    """
    body = message[4:]
    pos = 1 + body[0] + 3 if tls13 else 3  # past the request context (1.3) and the list length
    if pos + 3 > len(body):
        return None
    size = int.from_bytes(body[pos : pos + 3], "big")
    if size == 0:
        return None
    return certificate_info(body[pos + 3 : pos + 3 + size])
