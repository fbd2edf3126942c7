"""adt_listener.tls without sockets: the refusal reasons, and certificates read out of
TLS Certificate handshake messages (byte tables; the certificates were made with
`openssl req -x509`, their subject and notAfter as openssl prints them)."""

from __future__ import annotations

import datetime as dt
import ssl

import pytest

from adt_listener import tls

# subject=C = US, ST = California, O = County General, OU = Interfaces, CN = county-general-mirth
# notAfter=Nov 29 06:07:01 2036 GMT (UTCTime)
COUNTY_PEM = """
MIICMzCCAdmgAwIBAgIUcukvtYnW55H4698CseNM1NnmDKIwCgYIKoZIzj0EAwIw
bzELMAkGA1UEBhMCVVMxEzARBgNVBAgMCkNhbGlmb3JuaWExFzAVBgNVBAoMDkNv
dW50eSBHZW5lcmFsMRMwEQYDVQQLDApJbnRlcmZhY2VzMR0wGwYDVQQDDBRjb3Vu
dHktZ2VuZXJhbC1taXJ0aDAeFw0yNjEyMDIwNjA3MDFaFw0zNjExMjkwNjA3MDFa
MG8xCzAJBgNVBAYTAlVTMRMwEQYDVQQIDApDYWxpZm9ybmlhMRcwFQYDVQQKDA5D
b3VudHkgR2VuZXJhbDETMBEGA1UECwwKSW50ZXJmYWNlczEdMBsGA1UEAwwUY291
bnR5LWdlbmVyYWwtbWlydGgwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAASp8bUV
z5kJHe2jAf9B7CxvghyD0WUUddnA+HNMC2KbjacXz9Jd1gOjjdvcj+9GtjG2G5SK
VLvO+69UivEM4q/do1MwUTAdBgNVHQ4EFgQUo4Im+NhOPfOTpfFG1a3iR1khIFAw
HwYDVR0jBBgwFoAUo4Im+NhOPfOTpfFG1a3iR1khIFAwDwYDVR0TAQH/BAUwAwEB
/zAKBggqhkjOPQQDAgNIADBFAiEAmOEMH1eZ+d8Huaqcdz/UKgDdgzeacAJtN0nQ
sJGHvqMCIAevyFjAOV01krsMI9qyBLZxcREu7W8HHKec52IyaACt
"""
# subject=CN = far-future; notAfter=Apr 19 06:07:03 2054 GMT (GeneralizedTime: after 2049)
FAR_PEM = """
MIIBgjCCASegAwIBAgIUUCagrBojiL3FsuKtg2a5t2WvfsMwCgYIKoZIzj0EAwIw
FTETMBEGA1UEAwwKZmFyLWZ1dHVyZTAgFw0yNjEyMDIwNjA3MDNaGA8yMDU0MDQx
OTA2MDcwM1owFTETMBEGA1UEAwwKZmFyLWZ1dHVyZTBZMBMGByqGSM49AgEGCCqG
SM49AwEHA0IABFzWi846jgBFdPUPs1aZ73QPj2c/2aehjN9GxeOlXxBoFYm3L4tc
XKnSlUp3l4lHBMuV4Dcd6xyxvLUW8u0G2u+jUzBRMB0GA1UdDgQWBBSt+o7IDhPT
TkKo7F4GPA88IfAVVzAfBgNVHSMEGDAWgBSt+o7IDhPTTkKo7F4GPA88IfAVVzAP
BgNVHRMBAf8EBTADAQH/MAoGCCqGSM49BAMCA0kAMEYCIQDy8aFsgmTHbN2ExO0M
YUUmUptFVmfGRJcT9qmpN4oXCwIhAKCTKY4OINYqydMGlTASAx3u2nrxOl8WU5nO
H0KfGMkI
"""


def der(pem_body: str) -> bytes:
    return ssl.PEM_cert_to_DER_cert(f"-----BEGIN CERTIFICATE-----\n{pem_body.strip()}\n-----END CERTIFICATE-----\n")


def u24(n: int) -> bytes:
    return n.to_bytes(3, "big")


def tls12_message(*certs: bytes) -> bytes:
    """RFC 5246 7.4.2: certificate_list of (u24 length, DER)."""
    entries = b"".join(u24(len(c)) + c for c in certs)
    body = u24(len(entries)) + entries
    return b"\x0b" + u24(len(body)) + body


def tls13_message(*certs: bytes, context: bytes = b"") -> bytes:
    """RFC 8446 4.4.2: request context, then entries of (u24 length, DER, u16 extensions)."""
    entries = b"".join(u24(len(c)) + c + b"\x00\x00" for c in certs)
    body = bytes([len(context)]) + context + u24(len(entries)) + entries
    return b"\x0b" + u24(len(body)) + body


COUNTY = tls.PeerCertificate(
    "C=US,ST=California,O=County General,OU=Interfaces,CN=county-general-mirth",
    dt.datetime(2036, 11, 29, 6, 7, 1, tzinfo=dt.UTC),
)
FAR = tls.PeerCertificate("CN=far-future", dt.datetime(2054, 4, 19, 6, 7, 3, tzinfo=dt.UTC))


@pytest.mark.parametrize(("pem", "expected"), [(COUNTY_PEM, COUNTY), (FAR_PEM, FAR)])
def test_certificate_info_reads_subject_and_not_after(pem: str, expected: tls.PeerCertificate) -> None:
    assert tls.certificate_info(der(pem)) == expected


@pytest.mark.parametrize(
    ("message", "tls13", "expected"),
    [
        (tls12_message(der(COUNTY_PEM), der(FAR_PEM)), False, COUNTY),  # the leaf comes first
        (tls13_message(der(FAR_PEM), der(COUNTY_PEM)), True, FAR),
        (tls13_message(der(COUNTY_PEM), context=b"\x01\x02"), True, COUNTY),
        (tls12_message(), False, None),  # no certificate sent
        (tls13_message(), True, None),
    ],
)
def test_first_certificate_of_a_handshake_message(message: bytes, tls13: bool, expected: object) -> None:
    assert tls._first_certificate(message, tls13=tls13) == expected


def test_a_truncated_certificate_is_an_error_not_a_guess() -> None:
    with pytest.raises((ValueError, IndexError)):
        tls.certificate_info(der(COUNTY_PEM)[:200])


def test_subject_is_printable_and_capped() -> None:
    cert = tls.from_getpeercert({"subject": ((("commonName", "evil\r\nline" + "x" * 500),),),
                                 "notAfter": "Nov 29 06:07:01 2036 GMT"})
    assert cert is not None
    assert "\r" not in cert.subject and "\n" not in cert.subject and len(cert.subject) <= 200
    assert cert.not_after == dt.datetime(2036, 11, 29, 6, 7, 1, tzinfo=dt.UTC)
    assert tls.describe(cert).endswith("expires 2036-11-29T06:07:01Z")
    assert tls.describe(None) == "no client certificate seen"


def ssl_error(reason: str) -> ssl.SSLError:
    exc = ssl.SSLError(1, f"[SSL: {reason}] ...")
    exc.reason = reason
    return exc


def verify_error(code: int, message: str) -> ssl.SSLCertVerificationError:
    exc = ssl.SSLCertVerificationError(1, "certificate verify failed")
    exc.reason = "CERTIFICATE_VERIFY_FAILED"
    exc.verify_code = code
    exc.verify_message = message
    return exc


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (ssl_error("PEER_DID_NOT_RETURN_A_CERTIFICATE"), "no_client_cert"),
        (verify_error(20, "unable to get local issuer certificate"), "unknown_ca"),
        (verify_error(18, "self-signed certificate"), "unknown_ca"),
        (verify_error(10, "certificate has expired"), "expired"),
        (verify_error(9, "certificate is not yet valid"), "other"),
        (ssl_error("UNSUPPORTED_PROTOCOL"), "protocol_version"),
        (ssl_error("TLSV1_ALERT_PROTOCOL_VERSION"), "protocol_version"),
        (ssl_error("WRONG_VERSION_NUMBER"), "not_tls"),
        (ssl_error("HTTP_REQUEST"), "not_tls"),
        (TimeoutError(), "handshake_timeout"),
        (ConnectionAbortedError("SSL handshake is taking longer than 10 seconds: aborting the connection"),
         "handshake_timeout"),
        (ConnectionResetError(), "other"),
        (ssl_error("SOMETHING_NEW"), "other"),
    ],
)
def test_refusal_reason(exc: BaseException, reason: str) -> None:
    assert tls.refusal_reason(exc) == reason
    assert reason in tls.REASONS


def test_refusal_detail_says_what_openssl_said() -> None:
    assert tls.refusal_detail(verify_error(10, "certificate has expired")) == (
        "certificate verify failed: certificate has expired"
    )
    assert tls.refusal_detail(ssl_error("WRONG_VERSION_NUMBER")) == "wrong version number"
    assert tls.refusal_detail(ConnectionResetError()) == tls.PEER_CLOSED
