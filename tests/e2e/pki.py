"""Test certificates made with the openssl command line (the `cryptography` package is not
a dependency): a CA, a server certificate for 127.0.0.1/localhost, client certificates
signed by the CA, one expired, and one signed by another CA."""

from __future__ import annotations

import datetime as dt
import shutil
import ssl
import subprocess
from pathlib import Path

import pytest

KNOWN_CN = "county-general-mirth"
UNKNOWN_CN = "somebody-else"
EXPIRED_CN = "county-general-old"
FOREIGN_CN = "county-general-other-ca"


def make_pki(d: Path) -> Path:
    """Files in ``d``: ca.pem, server.{pem,key}, and {known,unknown,expired,foreign}.{pem,key}."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    for ca, cn in (("ca", "test-ca"), ("other-ca", "another-ca")):
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{ca}.key", "-out", f"{ca}.pem",
                "-days", "2", "-subj", f"/CN={cn}")
    (d / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    certs = (
        ("server", "localhost", "ca", "2"),
        ("known", KNOWN_CN, "ca", "2"),
        ("unknown", UNKNOWN_CN, "ca", "2"),
        ("expired", EXPIRED_CN, "ca", "-1"),  # notAfter a day ago
        ("foreign", FOREIGN_CN, "other-ca", "2"),
    )
    for name, cn, ca, days in certs:
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                "-subj", f"/O=Test County/CN={cn}")
        extra = ["-extfile", "server.ext"] if name == "server" else []
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key", "-CAcreateserial",
                "-out", f"{name}.pem", "-days", days, *extra)
    return d


def not_after(pki: Path, name: str) -> str:
    """The certificate's notAfter as the listener logs it (2026-12-01T05:55:26Z)."""
    out = subprocess.run(["openssl", "x509", "-in", str(pki / f"{name}.pem"), "-noout", "-enddate"],
                         check=True, capture_output=True, text=True).stdout
    seconds = ssl.cert_time_to_seconds(out.strip().split("=", 1)[1])
    return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def client_tls(pki: Path, name: str | None) -> ssl.SSLContext:
    """A client context trusting the test CA, presenting certificate ``name`` (or none)."""
    context = ssl.create_default_context(cafile=pki / "ca.pem")
    if name is not None:
        context.load_cert_chain(pki / f"{name}.pem", pki / f"{name}.key")
    return context
