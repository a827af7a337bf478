"""Pure tests of the Plaid webhook verification core: real P-256 keys, tokens signed with PyJWT."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jwt.algorithms import ECAlgorithm

from webhooks.verification import (
    MAX_TOKEN_LEN,
    VerificationError,
    VerifiedWebhook,
    unverified_kid,
    verify,
)

NOW = 1_700_000_000.0
KID = "bfbd5111-8e33-4643-8ced-b2e642a72f3c"
# Plaid sends JSON indented with two spaces; the signed hash is over these exact bytes.
BODY = b'{\n  "environment": "sandbox",\n  "webhook_code": "DEFAULT_UPDATE",\n  "webhook_type": "AUTH"\n}'


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def make_key(
    kid: str = KID, expired_at: int | None = None
) -> tuple[ec.EllipticCurvePrivateKey, dict[str, Any]]:
    private = ec.generate_private_key(ec.SECP256R1())
    jwk: dict[str, Any] = dict(ECAlgorithm.to_jwk(private.public_key(), as_dict=True))
    jwk.update(alg="ES256", kid=kid, use="sig", created_at=1_560_000_000, expired_at=expired_at)
    return private, jwk


def sign(
    private: ec.EllipticCurvePrivateKey,
    *,
    kid: str = KID,
    body: bytes = BODY,
    iat: float = NOW,
    drop: tuple[str, ...] = (),
    **claims: Any,
) -> str:
    payload: dict[str, Any] = {"iat": int(iat), "request_body_sha256": hashlib.sha256(body).hexdigest()}
    payload.update(claims)
    for name in drop:
        del payload[name]
    return jwt.encode(payload, private, algorithm="ES256", headers={"kid": kid})


def hand_made(header: dict[str, Any], payload: dict[str, Any], signature: bytes = b"") -> str:
    return ".".join(
        [b64url(json.dumps(header).encode()), b64url(json.dumps(payload).encode()), b64url(signature)]
    )


PRIVATE, JWK = make_key()
GENUINE = sign(PRIVATE)
GOOD_CLAIMS = {"iat": int(NOW), "request_body_sha256": hashlib.sha256(BODY).hexdigest()}


def reason_of(token: Any, body: Any = BODY, key: Any = JWK, **kwargs: Any) -> str:
    with pytest.raises(VerificationError) as info:
        verify(token, body, key, now=NOW, **kwargs)
    return info.value.reason


def test_valid_webhook_verifies() -> None:
    result = verify(GENUINE, BODY, JWK, now=NOW)
    assert result == VerifiedWebhook(kid=KID, iat=int(NOW), body_sha256=hashlib.sha256(BODY).hexdigest())
    assert unverified_kid(GENUINE) == KID


@pytest.mark.parametrize("token", [None, ""])
def test_missing_header(token: str | None) -> None:
    with pytest.raises(VerificationError) as info:
        unverified_kid(token)
    assert (info.value.reason, info.value.status) == ("missing_header", 401)
    assert reason_of(token) == "missing_header"


def test_alg_none_is_refused() -> None:
    token = hand_made({"alg": "none", "kid": KID, "typ": "JWT"}, GOOD_CLAIMS)
    assert token.endswith(".")
    with pytest.raises(VerificationError) as info:
        unverified_kid(token)
    assert info.value.reason == "bad_alg"
    assert reason_of(token) == "bad_alg"


@pytest.mark.parametrize(
    "alg", ["HS256", "ES256K", "es256", "ES384", "RS256", "PS256", "EdDSA", " ES256", ["ES256"], None, 256]
)
def test_any_alg_but_es256_is_refused(alg: Any) -> None:
    # A genuine ES256 signature is attached; the header alone must sink it.
    signature = GENUINE.rsplit(".", 1)[1]
    token = hand_made({"alg": alg, "kid": KID}, GOOD_CLAIMS) + signature
    assert reason_of(token) == "bad_alg"


def test_header_without_alg_is_refused() -> None:
    token = hand_made({"kid": KID}, GOOD_CLAIMS, b"\x01" * 64)
    assert reason_of(token) == "bad_alg"


@pytest.mark.parametrize(
    "encoding", [serialization.Encoding.PEM, serialization.Encoding.X962, serialization.Encoding.DER]
)
def test_hs256_signed_with_the_public_key_is_refused(encoding: serialization.Encoding) -> None:
    public = PRIVATE.public_key()
    fmt = (
        serialization.PublicFormat.UncompressedPoint
        if encoding is serialization.Encoding.X962
        else serialization.PublicFormat.SubjectPublicKeyInfo
    )
    secret = public.public_bytes(encoding, fmt)
    header = b64url(json.dumps({"alg": "HS256", "kid": KID, "typ": "JWT"}).encode())
    payload = b64url(json.dumps(GOOD_CLAIMS).encode())
    mac = hmac.new(secret, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    assert reason_of(f"{header}.{payload}.{b64url(mac)}") == "bad_alg"


def test_es256_header_with_a_mac_over_the_public_key_is_refused() -> None:
    # Same confusion attempt but claiming ES256, with a 64-byte MAC so the shape is right.
    secret = PRIVATE.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = b64url(json.dumps({"alg": "ES256", "kid": KID}).encode())
    payload = b64url(json.dumps(GOOD_CLAIMS).encode())
    mac = hmac.new(secret, f"{header}.{payload}".encode(), hashlib.sha512).digest()
    assert reason_of(f"{header}.{payload}.{b64url(mac)}") == "bad_signature"


def test_valid_signature_over_another_body() -> None:
    token = sign(PRIVATE, body=b'{\n  "webhook_code": "SOMETHING_ELSE"\n}')
    assert reason_of(token, BODY) == "body_hash_mismatch"


def test_body_changed_by_one_byte() -> None:
    tampered = BODY.replace(b"sandbox", b"sandbot")
    assert len(tampered) == len(BODY)
    assert reason_of(GENUINE, tampered) == "body_hash_mismatch"


def test_body_reindented_fails() -> None:
    reindented = json.dumps(json.loads(BODY), indent=4).encode()
    assert json.loads(reindented) == json.loads(BODY)
    assert reason_of(GENUINE, reindented) == "body_hash_mismatch"


def test_iat_six_minutes_old_is_stale() -> None:
    assert reason_of(sign(PRIVATE, iat=NOW - 360)) == "stale_iat"


def test_iat_exactly_max_age_is_accepted() -> None:
    assert verify(sign(PRIVATE, iat=NOW - 300), BODY, JWK, now=NOW).iat == int(NOW) - 300
    assert reason_of(sign(PRIVATE, iat=NOW - 301)) == "stale_iat"


def test_iat_too_far_in_the_future() -> None:
    assert reason_of(sign(PRIVATE, iat=NOW + 31)) == "future_iat"
    assert reason_of(sign(PRIVATE, iat=NOW + 3600)) == "future_iat"


@pytest.mark.parametrize("ahead", [1, 10, 30])
def test_iat_within_skew_is_accepted(ahead: int) -> None:
    # PyJWT alone would refuse any iat in the future; ours allows future_skew_s.
    assert verify(sign(PRIVATE, iat=NOW + ahead), BODY, JWK, now=NOW).iat == int(NOW) + ahead


def test_custom_window() -> None:
    token = sign(PRIVATE, iat=NOW - 100)
    assert reason_of(token, max_age_s=60) == "stale_iat"
    assert reason_of(sign(PRIVATE, iat=NOW + 5), future_skew_s=0) == "future_iat"


def test_expired_key_is_refused() -> None:
    private, jwk = make_key(expired_at=int(NOW) - 1)
    with pytest.raises(VerificationError) as info:
        verify(sign(private), BODY, jwk, now=NOW)
    assert (info.value.reason, info.value.kid) == ("expired_key", KID)


def test_key_expiring_later_is_still_usable() -> None:
    private, jwk = make_key(expired_at=int(NOW) + 3600)
    assert verify(sign(private), BODY, jwk, now=NOW).kid == KID


def test_key_with_another_kid_is_refused() -> None:
    private, jwk = make_key(kid="another-kid")
    assert reason_of(sign(private), key=jwk) == "unknown_kid"


def test_token_signed_by_another_key_with_the_same_kid() -> None:
    impostor, _ = make_key()
    assert reason_of(sign(impostor)) == "bad_signature"


@pytest.mark.parametrize("cut", [1, 2, 10, 43, 86, 87])
def test_truncated_jwt(cut: int) -> None:
    assert reason_of(GENUINE[:-cut]) == "malformed_jwt"


def test_truncated_to_two_segments() -> None:
    assert reason_of(GENUINE.rsplit(".", 1)[0]) == "malformed_jwt"
    assert reason_of(GENUINE[:20]) == "malformed_jwt"


@pytest.mark.parametrize(
    "token",
    [
        "garbage",
        "a.b.c",
        "..",
        "....",
        "Bearer " + GENUINE,
        GENUINE + ".",
        GENUINE + " ",
        "é.é.é",
        GENUINE[:10] + "\u00e9" + GENUINE[11:],
        "A" * (MAX_TOKEN_LEN + 1),
        b64url(b"[1, 2]") + "." + GENUINE.split(".", 1)[1],
        b64url(b"\xff\xfe") + "." + GENUINE.split(".", 1)[1],
        b64url(b"[" * 5000) + "." + GENUINE.split(".", 1)[1],
        b64url(b'{"alg": NaN}') + "." + GENUINE.split(".", 1)[1],
    ],
)
def test_garbage_is_malformed(token: str) -> None:
    assert reason_of(token) == "malformed_jwt"


def test_non_string_token_is_malformed() -> None:
    assert reason_of(GENUINE.encode()) == "malformed_jwt"


def test_long_token_is_refused_before_any_work() -> None:
    padded = sign(PRIVATE, padding="x" * MAX_TOKEN_LEN)
    assert reason_of(padded) == "malformed_jwt"


def test_non_canonical_signature_encoding_is_refused() -> None:
    # 64 bytes in 86 base64url chars leaves 2 spare bits in the last char; setting them would be a
    # second spelling of the same signature.
    head, last = GENUINE[:-1], GENUINE[-1]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    twin = alphabet[alphabet.index(last) ^ 1]
    assert reason_of(head + twin) == "malformed_jwt"


def test_duplicate_header_members_are_refused() -> None:
    raw = b'{"alg": "none", "alg": "ES256", "kid": "%s"}' % KID.encode()
    token = b64url(raw) + "." + GENUINE.split(".", 1)[1]
    assert reason_of(token) == "malformed_jwt"


@pytest.mark.parametrize("extra", [{"crit": ["exp"]}, {"b64": False, "crit": ["b64"]}, {"b64": True}])
def test_jws_extensions_are_refused(extra: dict[str, Any]) -> None:
    token = hand_made({"alg": "ES256", "kid": KID, **extra}, GOOD_CLAIMS, b"\x01" * 64)
    assert reason_of(token) == "malformed_jwt"


@pytest.mark.parametrize("kid", [None, "", 42, ["a"], "k" * 129, "bad\nkid", "kid\u00e9"])
def test_missing_or_odd_kid(kid: Any) -> None:
    header = {"alg": "ES256", "kid": kid} if kid is not None else {"alg": "ES256"}
    token = hand_made(header, GOOD_CLAIMS, b"\x01" * 64)
    with pytest.raises(VerificationError) as info:
        unverified_kid(token)
    assert info.value.reason == "missing_kid"


def test_kid_of_max_length_is_fine() -> None:
    kid = "k" * 128
    private, jwk = make_key(kid=kid)
    assert verify(sign(private, kid=kid), BODY, jwk, now=NOW).kid == kid


def test_missing_iat() -> None:
    assert reason_of(sign(PRIVATE, drop=("iat",))) == "missing_iat"


@pytest.mark.parametrize("iat", ["1700000000", True, [1]])
def test_unusable_iat(iat: Any) -> None:
    token = jwt.encode({**GOOD_CLAIMS, "iat": iat}, PRIVATE, algorithm="ES256", headers={"kid": KID})
    assert reason_of(token) == "missing_iat"


def signed_payload(payload: str) -> str:
    """A genuine ES256 signature by PRIVATE over exactly this payload text."""
    signing_input = f"{b64url(json.dumps({'alg': 'ES256', 'kid': KID}).encode())}.{b64url(payload.encode())}"
    signature = ECAlgorithm(ECAlgorithm.SHA256).sign(signing_input.encode(), PRIVATE)
    return f"{signing_input}.{b64url(signature)}"


def test_signed_payload_is_verified_as_it_was_signed() -> None:
    assert verify(signed_payload(json.dumps(GOOD_CLAIMS)), BODY, JWK, now=NOW).iat == int(NOW)


DIGEST = hashlib.sha256(BODY).hexdigest()


@pytest.mark.parametrize(
    "payload",
    [
        # Infinity is not JSON (Python's json reads it; a signed payload may still not carry it)
        f'{{"iat": Infinity, "request_body_sha256": "{DIGEST}"}}',
        # two body hashes, the second one right: which one was meant is not for the receiver to guess
        f'{{"iat": {int(NOW)}, "request_body_sha256": "{"0" * 64}", "request_body_sha256": "{DIGEST}"}}',
        "[1, 2]",
        "not json",
    ],
)
def test_a_signed_payload_that_is_not_one_plain_json_object_is_malformed(payload: str) -> None:
    assert reason_of(signed_payload(payload)) == "malformed_jwt"


def test_huge_integer_iat_does_not_overflow() -> None:
    token = jwt.encode({**GOOD_CLAIMS, "iat": 10**400}, PRIVATE, algorithm="ES256", headers={"kid": KID})
    assert reason_of(token) == "future_iat"


def test_missing_body_hash_claim() -> None:
    assert reason_of(sign(PRIVATE, drop=("request_body_sha256",))) == "missing_body_hash"


@pytest.mark.parametrize("claimed", [None, 7, ["x"]])
def test_non_string_body_hash_claim(claimed: Any) -> None:
    assert reason_of(sign(PRIVATE, request_body_sha256=claimed)) == "missing_body_hash"


@pytest.mark.parametrize("claimed", ["", "zz", "\u00e9" * 64])
def test_wrong_body_hash_claim(claimed: str) -> None:
    assert reason_of(sign(PRIVATE, request_body_sha256=claimed)) == "body_hash_mismatch"


def test_uppercase_body_hash_claim_is_refused() -> None:
    claimed = hashlib.sha256(BODY).hexdigest().upper()
    assert reason_of(sign(PRIVATE, request_body_sha256=claimed)) == "body_hash_mismatch"


@pytest.mark.parametrize("payload", [b"[1]", b"not json", b'"iat"', b"\xff"])
def test_signed_payload_that_is_not_an_object(payload: bytes) -> None:
    token = jwt.api_jws.encode(payload, PRIVATE, algorithm="ES256", headers={"kid": KID})
    assert reason_of(token) == "malformed_jwt"


def test_body_must_be_bytes() -> None:
    with pytest.raises(VerificationError) as info:
        verify(GENUINE, BODY.decode(), JWK, now=NOW)  # type: ignore[arg-type]
    assert (info.value.reason, info.value.status) == ("bad_body", 400)


def _other_point() -> tuple[str, str]:
    _, other = make_key()
    return other["x"], other["y"]


@pytest.mark.parametrize(
    "change",
    [
        {"kty": "RSA"},
        {"crv": "P-384"},
        {"crv": "secp256k1"},
        {"alg": "HS256"},
        {"alg": "ES384"},
        {"use": "enc"},
        {"x": None},
        {"y": 12},
        {"x": "AAAA"},
        {"x": "!" * 43},
        {"y": b64url(b"\x01" * 32)},  # not on the curve
        {"expired_at": "soon"},
        {"expired_at": True},
        {"expired_at": float("nan")},
    ],
)
def test_malformed_key_is_a_verification_error(change: dict[str, Any]) -> None:
    assert reason_of(GENUINE, key={**JWK, **change}) == "bad_key"


@pytest.mark.parametrize("drop", ["kty", "crv", "x", "y"])
def test_key_missing_a_member(drop: str) -> None:
    key = {name: value for name, value in JWK.items() if name != drop}
    assert reason_of(GENUINE, key=key) == "bad_key"


@pytest.mark.parametrize("key", [None, [], "key", 5])
def test_key_that_is_not_a_mapping(key: Any) -> None:
    assert reason_of(GENUINE, key=key) == "bad_key"


def test_key_with_private_part_uses_only_the_public_part() -> None:
    # Plaid never sends "d"; if it did, we would still only verify with the public point.
    private_jwk = ECAlgorithm.to_jwk(PRIVATE, as_dict=True)
    assert verify(GENUINE, BODY, {**JWK, "d": private_jwk["d"]}, now=NOW).kid == KID


def test_key_without_optional_members_verifies() -> None:
    key = {name: JWK[name] for name in ("kid", "kty", "crv", "x", "y")}
    assert verify(GENUINE, BODY, key, now=NOW).kid == KID


# --- property: nothing but VerificationError, and nothing but the genuine pair is accepted ---------

_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


@st.composite
def mutated_tokens(draw: st.DrawFn) -> str:
    token = GENUINE
    kind = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "splice_header"]))
    if kind == "flip":
        for _ in range(draw(st.integers(1, 3))):
            i = draw(st.integers(0, len(token) - 1))
            token = token[:i] + draw(st.sampled_from(_ALPHABET + ".=+/ é\x00")) + token[i + 1 :]
    elif kind == "truncate":
        token = token[: draw(st.integers(0, len(token) - 1))]
    elif kind == "insert":
        i = draw(st.integers(0, len(token)))
        token = token[:i] + draw(st.text(_ALPHABET + ".", min_size=1, max_size=8)) + token[i:]
    elif kind == "delete":
        i = draw(st.integers(0, len(token) - 1))
        token = token[:i] + token[i + 1 :]
    else:
        header = draw(
            st.dictionaries(
                st.sampled_from(["alg", "kid", "typ", "crit", "b64", "jku", "jwk"]),
                st.one_of(
                    st.sampled_from(["ES256", "none", "HS256", KID, "JWT"]),
                    st.none(),
                    st.booleans(),
                    st.integers(),
                    st.lists(st.just("ES256"), max_size=2),
                ),
            )
        )
        token = b64url(json.dumps(header).encode()) + "." + GENUINE.split(".", 1)[1]
    return token


def _b64_junk() -> st.SearchStrategy[str]:
    segment = st.text(_ALPHABET, max_size=120)
    return st.builds(lambda a, b, c: f"{a}.{b}.{c}", segment, segment, segment)


tokens = st.one_of(
    st.none(),
    st.just(GENUINE),
    st.text(max_size=300),
    mutated_tokens(),
    _b64_junk(),
)
bodies = st.one_of(
    st.just(BODY),
    st.binary(max_size=300),
    st.builds(
        lambda i, b: BODY[:i] + bytes([b]) + BODY[i + 1 :], st.integers(0, len(BODY) - 1), st.integers(0, 255)
    ),
)


@settings(max_examples=600, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(token=tokens, body=bodies)
def test_property_only_the_genuine_pair_passes(token: str | None, body: bytes) -> None:
    try:
        unverified_kid(token)
    except VerificationError as error:
        assert error.reason and error.status in {400, 401}
    try:
        result = verify(token, body, JWK, now=NOW)  # type: ignore[arg-type]
    except VerificationError as error:
        assert error.reason and error.status in {400, 401}
        return
    assert token == GENUINE
    assert body == BODY
    assert result.kid == KID
