"""Who may send: the senders registry (WPC_SENDERS_FILE, YAML).

    senders:
      - name: st-mary                 # shown in logs, metrics and the stored row
        facilities: [STMARY, SMH]     # MSH-4 values this sender may use (empty: any)
        http_token_sha256: 9f86d0...  # sha256 hex of the bearer token for POST /v1/adt
        tls_client_cn: st-mary-mirth  # client certificate CN on mutual-TLS MLLP
        addresses: [10.20.0.15, 10.21.4.0/28]  # optional: its engines' source IPs or CIDRs
        validation: sampled           # hl7apy conformance checks: off | sampled | all
        sample_rate: 0.05
    ops_token_sha256: 2c26b4...       # bearer token of ops endpoints (feed quality)

Without a file the listener runs open (the embedded demo): any sender, MSH-4
unchecked, validation of every message. With a file, an MLLP peer is identified by its
client certificate (mutual TLS) or, on plain TCP, by the MSH-4 it sends; a message
whose MSH-4 belongs to no sender, or not to the authenticated one, gets AR.
Tokens are stored as hashes so the file itself is not a credential.

A sender is *known* to the MLLP server when it connects from one of its `addresses`
(IPv4/IPv6 addresses or CIDR blocks; optional, files without it load as before) or
presents its `tls_client_cn` over mutual TLS. Known senders may use the slots kept
for them (WPC_MLLP_RESERVED_SLOTS), are exempt from the per-address connection limit
and the first-frame deadline, and their idle connections are evicted last
(`adt_listener.admission`). An address only opens the door: it does not name the
sender of a message, which on plain TCP is still read from MSH-4 (two senders may
share an address behind one interface engine or NAT).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

ValidationMode = Literal["off", "sampled", "all"]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class SendersFileError(ValueError):
    """The senders file is invalid (our configuration's fault: refuse to start)."""


@dataclass(frozen=True)
class Sender:
    name: str
    facilities: frozenset[str] = frozenset()
    http_token_sha256: str | None = None
    tls_client_cn: str | None = None
    validation: ValidationMode = "sampled"
    sample_rate: float = 0.05
    addresses: tuple[Network, ...] = ()

    def allows(self, facility: str) -> bool:
        return not self.facilities or facility in self.facilities


OPEN_SENDER = Sender(name="open", validation="all", sample_rate=1.0)


@dataclass(frozen=True)
class Senders:
    senders: tuple[Sender, ...] = ()
    ops_token_sha256: str | None = None
    _by_facility: dict[str, Sender] = field(default_factory=dict, compare=False)

    @property
    def open(self) -> bool:
        return not self.senders

    def by_certificate(self, cn: str) -> Sender | None:
        return next((s for s in self.senders if s.tls_client_cn == cn), None)

    @property
    def reserves(self) -> bool:
        """Whether any sender can be known on connecting (by address or certificate), so
        that slots kept for known senders serve someone."""
        return any(s.addresses or s.tls_client_cn for s in self.senders)

    def by_address(self, address: str) -> Sender | None:
        """The sender whose `addresses` hold this peer address, or None. An IPv4 peer
        seen on a dual-stack socket (``::ffff:10.0.0.5``) matches its IPv4 entry."""
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return None
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return next((s for s in self.senders if any(ip in net for net in s.addresses)), None)

    def by_token(self, token: str) -> Sender | None:
        digest = hashlib.sha256(token.encode()).hexdigest()
        for s in self.senders:
            if s.http_token_sha256 and hmac.compare_digest(s.http_token_sha256, digest):
                return s
        return None

    def by_facility(self, facility: str) -> Sender | None:
        return self._by_facility.get(facility)

    def named(self, name: str) -> Sender | None:
        """The sender called ``name`` (a stored message's ``sender``), or None."""
        return next((s for s in self.senders if s.name == name), None)

    def ops_token_ok(self, token: str) -> bool:
        if self.ops_token_sha256 is None:
            return self.open
        return hmac.compare_digest(self.ops_token_sha256, hashlib.sha256(token.encode()).hexdigest())


def load_senders(path: Path | None) -> Senders:
    if path is None:
        return Senders()
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise SendersFileError(f"cannot read senders file {path}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("senders"), list):
        raise SendersFileError(f"{path}: expected a mapping with a 'senders' list")
    senders: list[Sender] = []
    for n, entry in enumerate(doc["senders"]):
        if not isinstance(entry, dict) or not entry.get("name"):
            raise SendersFileError(f"{path}: sender #{n + 1} needs a name")
        mode = entry.get("validation", "sampled")
        if mode is False:  # YAML 1.1 reads an unquoted `off` as false
            mode = "off"
        if mode not in ("off", "sampled", "all"):
            raise SendersFileError(f"{path}: sender {entry['name']}: validation must be off, sampled or all")
        rate = float(entry.get("sample_rate", 0.05))
        if not 0.0 <= rate <= 1.0:
            raise SendersFileError(f"{path}: sender {entry['name']}: sample_rate must be within 0..1")
        addresses = entry.get("addresses") or []
        if not isinstance(addresses, list):
            raise SendersFileError(f"{path}: sender {entry['name']}: addresses must be a list of IPs or CIDRs")
        try:
            networks = tuple(ipaddress.ip_network(str(a), strict=False) for a in addresses)
        except ValueError as exc:
            raise SendersFileError(f"{path}: sender {entry['name']}: addresses: {exc}") from exc
        senders.append(
            Sender(
                name=str(entry["name"]),
                facilities=frozenset(str(f) for f in entry.get("facilities") or ()),
                http_token_sha256=entry.get("http_token_sha256"),
                tls_client_cn=entry.get("tls_client_cn"),
                validation=mode,
                sample_rate=rate,
                addresses=networks,
            )
        )
    by_facility: dict[str, Sender] = {}
    for s in senders:
        for f in s.facilities:
            if f in by_facility:
                raise SendersFileError(f"{path}: facility {f} belongs to two senders")
            by_facility[f] = s
    return Senders(tuple(senders), doc.get("ops_token_sha256"), by_facility)
