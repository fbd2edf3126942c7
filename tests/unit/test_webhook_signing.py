"""`webhook.sign` / `webhook.verify`: the signature partners check, as a table of cases."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from notifier.channels.webhook import sign, signature_header, verify

SECRET = "whsec_toc_south_1"
OLD_SECRET = "whsec_toc_south_0"
BODY = b'{"event":"admit","notice_id":"4f1c"}'
T = 1_760_000_000  # the signing time
NOW = T + 10.0  # the receiver's clock, a little later


def header(secret: str = SECRET, t: int = T, body: bytes = BODY) -> str:
    return signature_header(secret, t, body)


def test_sign_is_hmac_sha256_over_timestamp_dot_body() -> None:
    expected = hmac.new(SECRET.encode(), b"1760000000." + BODY, hashlib.sha256).hexdigest()
    assert sign(SECRET, T, BODY) == expected
    assert len(expected) == 64
    assert header() == f"t=1760000000,v1={expected}"


def test_sign_binds_the_timestamp() -> None:
    assert sign(SECRET, T, BODY) != sign(SECRET, T + 1, BODY)


CASES: list[tuple[str, str | list[str], str | None, bytes, float, bool]] = [
    # (case, receiver's secret(s), header, body, receiver's now, verifies?)
    ("good", SECRET, header(), BODY, NOW, True),
    ("good, same second", SECRET, header(), BODY, float(T), True),
    ("good, empty body", SECRET, header(body=b""), b"", NOW, True),
    ("tampered body", SECRET, header(), BODY.replace(b"admit", b"discharge"), NOW, False),
    ("body with a byte added", SECRET, header(), BODY + b" ", NOW, False),
    ("wrong secret", "whsec_someone_else", header(), BODY, NOW, False),
    ("timestamp changed after signing", SECRET, header().replace("t=1760000000", "t=1760000005"), BODY, NOW, False),
    ("just inside the window", SECRET, header(), BODY, T + 300.0, True),
    ("too old", SECRET, header(), BODY, T + 301.0, False),
    ("replayed a day later", SECRET, header(), BODY, T + 86_400.0, False),
    ("from the future, within tolerance", SECRET, header(), BODY, T - 300.0, True),
    ("from the future beyond tolerance", SECRET, header(), BODY, T - 301.0, False),
    # Key rotation, receiver side: it accepts the old and the new secret for a while.
    ("rotated: receiver knows both, signed with old", [SECRET, OLD_SECRET], header(OLD_SECRET), BODY, NOW, True),
    ("rotated: receiver knows both, signed with new", [OLD_SECRET, SECRET], header(), BODY, NOW, True),
    ("rotated: receiver dropped the old one", [SECRET], header(OLD_SECRET), BODY, NOW, False),
    # Key rotation, sender side: two v1 values, one per secret.
    (
        "two v1 values, new first",
        SECRET,
        f"t={T},v1={sign(SECRET, T, BODY)},v1={sign(OLD_SECRET, T, BODY)}",
        BODY,
        NOW,
        True,
    ),
    (
        "two v1 values, old first",
        OLD_SECRET,
        f"t={T},v1={sign(SECRET, T, BODY)},v1={sign(OLD_SECRET, T, BODY)}",
        BODY,
        NOW,
        True,
    ),
    ("two v1 values, neither ours", "whsec_other", f"t={T},v1={'0' * 64},v1={'f' * 64}", BODY, NOW, False),
    ("unknown schemes ignored", SECRET, f"v0=abc,t={T},v2=zzz,v1={sign(SECRET, T, BODY)}", BODY, NOW, True),
    ("spaces after commas", SECRET, f"t={T}, v1={sign(SECRET, T, BODY)}", BODY, NOW, True),
    ("no secrets at all", [], header(), BODY, NOW, False),
    ("empty secret never verifies", "", header(""), BODY, NOW, False),
    # Malformed headers: False, never an exception.
    ("missing header", SECRET, None, BODY, NOW, False),
    ("empty header", SECRET, "", BODY, NOW, False),
    ("no timestamp", SECRET, f"v1={sign(SECRET, T, BODY)}", BODY, NOW, False),
    ("no v1", SECRET, f"t={T}", BODY, NOW, False),
    ("empty v1", SECRET, f"t={T},v1=", BODY, NOW, False),
    ("two timestamps", SECRET, f"t={T},t={T},v1={sign(SECRET, T, BODY)}", BODY, NOW, False),
    ("timestamp not a number", SECRET, f"t=yesterday,v1={sign(SECRET, T, BODY)}", BODY, NOW, False),
    ("timestamp with a sign", SECRET, f"t=+{T},v1={sign(SECRET, T, BODY)}", BODY, NOW, False),
    ("timestamp with underscores", SECRET, f"t=1_760_000_000,v1={sign(SECRET, T, BODY)}", BODY, NOW, False),
    ("timestamp absurdly long", SECRET, f"t={'9' * 40},v1={sign(SECRET, T, BODY)}", BODY, NOW, False),
    ("item without =", SECRET, f"t={T},v1{sign(SECRET, T, BODY)}", BODY, NOW, False),
    ("non-ASCII header", SECRET, f"t={T},v1={sign(SECRET, T, BODY)}é", BODY, NOW, False),
    ("uppercase hex is not ours", SECRET, f"t={T},v1={sign(SECRET, T, BODY).upper()}", BODY, NOW, False),
    ("truncated digest", SECRET, f"t={T},v1={sign(SECRET, T, BODY)[:32]}", BODY, NOW, False),
    ("huge header", SECRET, f"t={T},v1={sign(SECRET, T, BODY)}," + ",".join(["x=y"] * 2000), BODY, NOW, False),
]


@pytest.mark.parametrize(
    ("secret", "header_value", "body", "now", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_verify(secret: str | list[str], header_value: str | None, body: bytes, now: float, expected: bool) -> None:
    assert verify(secret, header_value, body, now) is expected


def test_verify_custom_tolerance() -> None:
    assert verify(SECRET, header(), BODY, T + 30.0, tolerance_s=30) is True
    assert verify(SECRET, header(), BODY, T + 31.0, tolerance_s=30) is False


def test_verify_accepts_any_iterable_of_secrets() -> None:
    assert verify((s for s in [OLD_SECRET, SECRET]), header(), BODY, NOW) is True
