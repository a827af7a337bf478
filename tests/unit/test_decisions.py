"""Pure decisions: failure classification, retry backoff, account choice, redaction, sealing, settings."""

from __future__ import annotations

import pytest

from worker.bus.retry import retry_decision
from worker.errors import SettingsError, TokenSealError, UpstreamError
from worker.items.rules import Kind, choose_account, classify, needs_login
from worker.items.sealing import Sealer
from worker.plaid_api import Account
from worker.redact import redact, redact_text
from worker.settings import load, parse_token_keys

TIERS = (100, 400, 1600)


def plaid_error(code: str | None, status: int | None, error_type: str | None = None) -> UpstreamError:
    return UpstreamError("x", service="plaid", status=status, error_code=code, error_type=error_type)


@pytest.mark.parametrize(
    ("code", "status", "kind"),
    [
        ("RATE_LIMIT_EXCEEDED", 429, Kind.TRANSIENT),
        ("INSTITUTION_DOWN", 400, Kind.TRANSIENT),
        ("INSTITUTION_NOT_RESPONDING", 400, Kind.TRANSIENT),
        ("PRODUCT_NOT_READY", 400, Kind.TRANSIENT),
        ("INTERNAL_SERVER_ERROR", 500, Kind.TRANSIENT),
        ("ATOMIC_503", 503, Kind.TRANSIENT),
        ("NETWORK_ERROR", None, Kind.TRANSIENT),
        ("INVALID_PUBLIC_TOKEN", 400, Kind.PERMANENT),
        ("INVALID_ACCESS_TOKEN", 400, Kind.PERMANENT),
        ("ITEM_LOGIN_REQUIRED", 400, Kind.PERMANENT),
        ("INVALID_FIELD", 400, Kind.PERMANENT),
        ("ATOMIC_IDEMPOTENCY_KEY_REUSED", 409, Kind.PERMANENT),
    ],
)
def test_classify(code: str, status: int | None, kind: Kind) -> None:
    assert classify(plaid_error(code, status)) is kind


def test_login_required_is_not_a_plain_failure() -> None:
    assert needs_login(plaid_error("ITEM_LOGIN_REQUIRED", 400))
    assert not needs_login(plaid_error("INVALID_ACCESS_TOKEN", 400))


def test_retry_backoff_grows_then_stops_at_budget() -> None:
    tiers = [retry_decision(attempt=a, budget=3, tiers_ms=TIERS) for a in (1, 2, 3)]
    assert [d.tier_ms for d in tiers if d] == [100, 400, 1600]
    assert retry_decision(attempt=4, budget=3, tiers_ms=TIERS) is None


def test_retry_jitter_only_shortens_within_a_quarter() -> None:
    d = retry_decision(attempt=2, budget=3, tiers_ms=TIERS, jitter=0.999)
    assert d is not None and d.tier_ms == 400 and 300 <= d.expiration_ms < 400
    d0 = retry_decision(attempt=2, budget=3, tiers_ms=TIERS, jitter=0.0)
    assert d0 is not None and d0.expiration_ms == 400


def test_retry_after_picks_a_tier_long_enough() -> None:
    d = retry_decision(attempt=1, budget=3, tiers_ms=TIERS, retry_after_s=1.0, jitter=0.9)
    assert d is not None and d.tier_ms == 1600 and d.expiration_ms == 1600


def acct(account_id: str, type_: str, subtype: str, status: str | None = None) -> Account:
    return Account(account_id, type_, subtype, status, "0000")


def test_account_choice_prefers_checking_then_savings() -> None:
    accounts = [
        acct("cc", "credit", "credit card"),
        acct("sv", "depository", "savings"),
        acct("ck", "depository", "checking"),
    ]
    assert choose_account(accounts, None).account_id == "ck"
    assert choose_account(accounts[:2], None).account_id == "sv"
    none = choose_account(accounts[:1], None)
    assert none.account_id is None and none.reason


def test_account_choice_honours_the_requested_account() -> None:
    accounts = [acct("sv", "depository", "savings"), acct("ck", "depository", "checking")]
    assert choose_account(accounts, "sv").account_id == "sv"
    assert choose_account(accounts, "nope").account_id is None


def test_account_awaiting_micro_deposits_is_marked() -> None:
    c = choose_account([acct("ck", "depository", "checking", "pending_automatic_verification")], None)
    assert c.account_id == "ck" and c.awaiting_verification
    expired = choose_account([acct("ck", "depository", "checking", "verification_expired")], None)
    assert expired.account_id is None


def test_redaction_masks_tokens_and_secret_fields() -> None:
    line = "exchange failed for access-sandbox-12345678-aaaa-bbbb-cccc-1234567890ab ok"
    assert "12345678" not in redact_text(line)
    out = redact({"public_token": "anything", "nested": ["processor-sandbox-abc-123"], "n": 1})
    assert out["public_token"] == "[redacted]"
    assert "abc-123" not in out["nested"][0]
    assert out["n"] == 1


def test_sealer_round_trip_and_binding() -> None:
    keys = parse_token_keys("K", "new:" + "A" * 43 + "=,old:" + "B" * 43 + "=")
    sealer = Sealer(keys)
    sealed = sealer.seal("access-sandbox-x", aad="items/1/access_token")
    assert sealed.key_id == "new" and b"access-sandbox" not in sealed.blob
    assert sealer.open(sealed, aad="items/1/access_token") == "access-sandbox-x"
    with pytest.raises(TokenSealError):
        sealer.open(sealed, aad="items/2/access_token")  # moved to another row
    with pytest.raises(TokenSealError):
        Sealer(keys[1:]).open(sealed, aad="items/1/access_token")  # key not configured


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"DATABASE_URL": "mysql://x"}, "DATABASE_URL"),
        ({"AMQP_URL": "http://x"}, "AMQP_URL"),
        ({"PLAID_ENV": "prod"}, "PLAID_ENV"),
        ({"PAW_PREFETCH": "many"}, "PAW_PREFETCH"),
        ({"PAW_TOKEN_KEYS": "k1:short"}, "PAW_TOKEN_KEYS"),
        ({"PLAID_ENV": "production"}, "is required when PLAID_ENV=production"),
    ],
)
def test_bad_settings_name_the_variable(env: dict[str, str], names: str) -> None:
    with pytest.raises(SettingsError, match=names):
        load(env)


def test_defaults_work_locally() -> None:
    s = load({})
    assert s.plaid_env == "sandbox" and s.token_keys and s.exchange == "paw.events"


def test_plaid_connection_failures_are_transient() -> None:
    import plaid

    from worker.plaid_api import MalformedResponse, to_upstream_error

    refused = to_upstream_error(plaid.ApiException(status=0, reason="MaxRetryError: connection refused"))
    assert refused.error_code == "NETWORK_ERROR" and classify(refused) is Kind.TRANSIENT
    garbled = to_upstream_error(MalformedResponse())
    assert classify(garbled) is Kind.TRANSIENT
    error = plaid.ApiException(status=400, reason="Bad Request")
    error.body = b'{"error_code": "INVALID_PUBLIC_TOKEN", "error_type": "INVALID_INPUT", "request_id": "r1"}'
    invalid = to_upstream_error(error)
    assert (invalid.error_code, invalid.request_id, classify(invalid)) == (
        "INVALID_PUBLIC_TOKEN",
        "r1",
        Kind.PERMANENT,
    )
