"""The senders file's optional `addresses:` (IPs and CIDRs that make a sender known on connect)."""

from __future__ import annotations

from pathlib import Path

import pytest

from adt_listener.senders import SendersFileError, load_senders

FILE = """\
senders:
  - name: county-general
    facilities: [COUNTYGEN]
    addresses: [10.20.0.15, 10.21.4.0/28, "2001:db8::/64"]
  - name: st-mary
    facilities: [STMARY]
    tls_client_cn: st-mary-mirth
"""


def test_addresses_name_the_sender_and_a_file_without_them_loads_as_before(tmp_path: Path) -> None:
    path = tmp_path / "senders.yaml"
    path.write_text(FILE)
    senders = load_senders(path)
    county = senders.by_facility("COUNTYGEN")
    assert county is not None
    for address in ("10.20.0.15", "10.21.4.1", "10.21.4.15", "::ffff:10.20.0.15", "2001:db8::7"):
        assert senders.by_address(address) is county, address
    for address in ("10.20.0.16", "10.21.4.16", "2001:db9::1", "not-an-ip", ""):
        assert senders.by_address(address) is None, address
    assert senders.by_facility("STMARY").addresses == ()  # type: ignore[union-attr]
    assert senders.reserves

    path.write_text("senders:\n  - name: plain\n    facilities: [PLAIN]\n")
    assert not load_senders(path).reserves
    assert load_senders(None).by_address("10.20.0.15") is None


@pytest.mark.parametrize("addresses", ["[10.20.0.300]", "[somewhere]", "10.20.0.15"])
def test_a_bad_address_is_refused_naming_the_sender(tmp_path: Path, addresses: str) -> None:
    path = tmp_path / "senders.yaml"
    path.write_text(f"senders:\n  - name: county-general\n    addresses: {addresses}\n")
    with pytest.raises(SendersFileError, match="county-general"):
        load_senders(path)
