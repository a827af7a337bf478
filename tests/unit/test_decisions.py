"""Pure decisions: failure classification, retry backoff, account choice, redaction, sealing, settings."""

from __future__ import annotations

import pytest

from worker.bus.retry import retry_decision
from worker.errors import SettingsError, TokenSealError, UpstreamError
from worker.items.rules import Kind, choose_account, classify, failure_trigger, needs_user, operator_hint
from worker.items.sealing import Sealer
from worker.items.states import State, Trigger
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
        ("INVALID_API_KEYS", 400, Kind.OPERATOR),
        ("INVALID_PRODUCT", 400, Kind.OPERATOR),
        ("UNAUTHORIZED_ENVIRONMENT", 400, Kind.OPERATOR),
        ("UNAUTHORIZED_ROUTE_ACCESS", 400, Kind.OPERATOR),
        ("DIRECT_INTEGRATION_NOT_ENABLED", 400, Kind.OPERATOR),
        ("INCOMPATIBLE_API_VERSION", 400, Kind.OPERATOR),
    ],
)
def test_classify(code: str, status: int | None, kind: Kind) -> None:
    assert classify(plaid_error(code, status)) is kind


@pytest.mark.parametrize(
    "code",
    [
        "ITEM_LOGIN_REQUIRED",
        "ACCESS_NOT_GRANTED",
        "ADDITIONAL_CONSENT_REQUIRED",
        "ITEM_LOCKED",
        "USER_SETUP_REQUIRED",
    ],
)
def test_errors_update_mode_fixes_wait_for_the_user_and_are_never_a_failure(code: str) -> None:
    err = plaid_error(code, 400)
    assert needs_user(err) and classify(err) is Kind.PERMANENT
    for state in (State.EXCHANGED, State.PROCESSOR_TOKEN_ISSUED, State.ATOMIC_PENDING):
        assert failure_trigger(state, err) is Trigger.LOGIN_REQUIRED


def test_other_permanent_errors_fail_and_operator_errors_have_a_hint() -> None:
    assert not needs_user(plaid_error("INVALID_ACCESS_TOKEN", 400))
    assert failure_trigger(State.EXCHANGED, plaid_error("INVALID_ACCESS_TOKEN", 400)) is Trigger.FAILED
    assert "Dashboard" in (operator_hint("INVALID_PRODUCT") or "")
    assert operator_hint("INVALID_ACCESS_TOKEN") is None


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


@pytest.mark.parametrize(
    ("type_", "subtype"),
    [("depository", "cd"), ("depository", "money market"), ("depository", "hsa"), ("credit", "credit card")],
)
def test_a_requested_account_that_cannot_fund_is_refused_naming_its_subtype(type_: str, subtype: str) -> None:
    choice = choose_account([acct("x", type_, subtype), acct("ck", "depository", "checking")], "x")
    assert choice.account_id is None and choice.error_code == "INELIGIBLE_ACCOUNT"
    assert subtype in (choice.reason or "")


def test_cash_management_funds_when_there_is_no_checking_or_savings() -> None:
    accounts = [acct("cd", "depository", "cd"), acct("cm", "depository", "cash management")]
    assert choose_account(accounts, None).account_id == "cm"
    assert choose_account([acct("cd", "depository", "cd")], None).error_code == "NO_USABLE_ACCOUNT"


@pytest.mark.parametrize(
    ("status", "waits", "refused"),
    [
        ("pending_automatic_verification", True, False),
        ("pending_manual_verification", True, False),
        ("unsent", True, False),
        ("database_insights_pending", True, False),
        ("verification_expired", False, True),
        ("verification_failed", False, True),
        ("database_insights_fail", False, True),
        ("database_insights_pass_with_caution", False, True),
        ("database_insights_pass", False, False),
        ("database_matched", False, False),
        ("automatically_verified", False, False),
        ("manually_verified", False, False),
        (None, False, False),
    ],
)
def test_verification_statuses_wait_fund_or_refuse(status: str | None, waits: bool, refused: bool) -> None:
    choice = choose_account([acct("ck", "depository", "checking", status)], None)
    assert (choice.account_id is None) is refused
    assert choice.awaiting_verification is waits
    if refused:
        assert choice.error_code == "ACCOUNT_NOT_VERIFIED"


def test_pass_with_caution_funds_only_when_the_operator_accepts_it() -> None:
    caution = [acct("ck", "depository", "checking", "database_insights_pass_with_caution")]
    assert choose_account(caution, None, accept_caution=True).account_id == "ck"


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
    from worker.plaid_api import malformed, plaid_error, unreachable

    refused = unreachable(ConnectionRefusedError())
    assert refused.error_code == "NETWORK_ERROR" and classify(refused) is Kind.TRANSIENT
    assert classify(malformed()) is Kind.TRANSIENT
    body = b'{"error_code": "INVALID_PUBLIC_TOKEN", "error_type": "INVALID_INPUT", "request_id": "r1"}'
    invalid = plaid_error(400, body, {})
    assert (invalid.error_code, invalid.request_id, classify(invalid)) == (
        "INVALID_PUBLIC_TOKEN",
        "r1",
        Kind.PERMANENT,
    )
    limited = plaid_error(429, b'{"error_code": "RATE_LIMIT_EXCEEDED"}', {"Retry-After": "3"})
    assert (limited.retry_after, classify(limited)) == (3.0, Kind.TRANSIENT)
    proxy = plaid_error(502, b"<html>bad gateway</html>", {})
    assert (proxy.error_code, proxy.status, classify(proxy)) == ("HTTP_502", 502, Kind.TRANSIENT)


def test_paw_refuses_to_talk_to_plaid_itself_with_the_emulators_keys() -> None:
    from worker.errors import SettingsError
    from worker.services import refuse_real_plaid_with_emulator_keys
    from worker.settings import Settings

    with pytest.raises(SettingsError, match="PLAID_CLIENT_ID and PLAID_SECRET must be set"):
        refuse_real_plaid_with_emulator_keys(Settings())  # sandbox.plaid.com with the emulator's keys
    with pytest.raises(SettingsError, match="PLAID_SECRET must be set"):
        refuse_real_plaid_with_emulator_keys(Settings(plaid_client_id="real-client"))
    refuse_real_plaid_with_emulator_keys(Settings(plaid_base_url="http://127.0.0.1:8090"))  # the emulator
    refuse_real_plaid_with_emulator_keys(Settings(plaid_client_id="real-client", plaid_secret="real-secret"))


def test_a_retry_refuses_the_states_a_drive_cannot_move_and_says_what_would() -> None:
    from worker.items.rules import retry_refusal

    movable = {
        State.EXCHANGED,
        State.PROCESSOR_TOKEN_ISSUED,
        State.AWAITING_VERIFICATION,
        State.LOGIN_REQUIRED,
    }
    assert {s for s in State if retry_refusal(s) is None} == movable
    assert "item.link message" in (retry_refusal(State.LINK) or "")
    assert "link again" in (retry_refusal(State.FAILED) or "")
    assert "Atomic's decision" in (retry_refusal(State.ATOMIC_PENDING) or "")
