"""Signed callbacks without a broker: the signature as the reference library verifies it, the
setting, the SSRF rules, and the HTTP client against a local server (no redirects, no refused
address reached)."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from aiohttp import web
from standardwebhooks import Webhook, WebhookVerificationError

from worker.bus.dlq import DeadLetter, replay_route
from worker.bus.topology import Topology
from worker.callbacks.delivery import CallbackClient
from worker.callbacks.payload import envelope, parse_event, signed_headers
from worker.callbacks.targets import address_refusal, url_refusal
from worker.errors import CallbackFailed, CallbackRefused, Poison, SettingsError
from worker.items.model import api_key_fingerprint
from worker.messages import H_QUEUE, H_ROUTING_KEY
from worker.settings import Settings, load

SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()


def event(**fields: object) -> dict[str, object]:
    return {
        "event_id": str(uuid.uuid4()),
        "item_id": str(uuid.uuid4()),
        "client_user_id": "u-1",
        "request_id": None,
        "from_state": "atomic_pending",
        "to_state": "atomic_verified",
        "trigger": "atomic_webhook",
        "error_code": None,
        "atomic_funding_source_id": "fs_1",
        "sequence": 3,
        "occurred_at": "2026-12-01T10:00:00+00:00",
        **fields,
    }


# -- signing -----------------------------------------------------------------------------------


def test_a_signed_callback_verifies_with_the_reference_library() -> None:
    e = event()
    body = envelope("item.state.atomic_verified", e)
    headers = signed_headers(SECRET, str(e["event_id"]), body, datetime.now(UTC))
    assert headers["webhook-id"] == e["event_id"] and headers["webhook-signature"].startswith("v1,")
    got = Webhook(SECRET).verify(body, headers)
    assert got == {"type": "item.state.atomic_verified", "timestamp": e["occurred_at"], "data": e}
    with pytest.raises(WebhookVerificationError):
        Webhook("whsec_" + base64.b64encode(b"x" * 32).decode()).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(body.replace(b"fs_1", b"fs_2"), headers)


def test_the_signature_is_the_specifications_own_example() -> None:
    """The example of the Standard Webhooks specification (and of every library's tests)."""
    headers = signed_headers(
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "msg_p5jXN8AQM9LWM0D4loKWxJek",
        b'{"test": 2432232314}',
        datetime.fromtimestamp(1614265330, UTC),
    )
    assert headers == {
        "webhook-id": "msg_p5jXN8AQM9LWM0D4loKWxJek",
        "webhook-timestamp": "1614265330",
        "webhook-signature": "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
    }


def test_events_are_checked_against_their_schema_and_later_fields_pass() -> None:
    e = event(extra_field_of_a_later_version=1)
    assert parse_event("item.state.atomic_verified", json.dumps(e).encode()) == e
    for bad in (b"not json", b"[]", json.dumps(event(item_id="nope")).encode()):
        with pytest.raises(Poison):
            parse_event("item.state.failed", bad)
    with pytest.raises(Poison):
        parse_event("item.link", json.dumps(event()).encode())
    missing = event()
    del missing["event_id"]
    with pytest.raises(Poison):
        parse_event("item.state.failed", json.dumps(missing).encode())


# -- the setting -------------------------------------------------------------------------------


def test_callbacks_setting_names_keys_by_fingerprint_and_hides_secrets() -> None:
    key = "upstream-app-key-1"
    fp = api_key_fingerprint(key)
    raw = f"{fp} https://app.example/hooks/paw {SECRET},\n amqp http://10.0.0.5:8080/cb?x=1 {SECRET}"
    s = load({"PAW_API_KEYS": key, "PAW_CALLBACKS": raw})
    assert [(c.ref, c.url) for c in s.callbacks] == [
        (fp, "https://app.example/hooks/paw"),
        ("amqp", "http://10.0.0.5:8080/cb?x=1"),
    ]
    assert len(fp) == 16 and key not in fp
    from worker.settings import ENV, show

    shown = show(ENV["PAW_CALLBACKS"], s.callbacks)
    assert SECRET not in shown and "https://app.example/hooks/paw" in shown
    assert Settings().callbacks == ()


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        ("amqp https://a.example/x", "REF URL SECRET"),
        (f"nothex https://a.example/x {SECRET}", "fingerprint"),
        (f"amqp ftp://a.example/x {SECRET}", "http"),
        (f"amqp https://user:pw@a.example/x {SECRET}", "user or password"),
        (f"amqp http://169.254.169.254/latest {SECRET}", "link-local"),
        (f"amqp http://metadata.google.internal/ {SECRET}", "metadata"),
        (f"amqp http://[fd00:ec2::254]/ {SECRET}", "metadata"),
        ("amqp https://a.example/x secret123", "whsec_"),
        ("amqp https://a.example/x whsec_c2hvcnQ=", "24 to 64 bytes"),
        (f"amqp https://a.example/x {SECRET}, amqp https://b.example/x {SECRET}", "two entries"),
        (f"0123456789abcdef https://a.example/x {SECRET}", "not the fingerprint of a key"),
    ],
)
def test_callbacks_setting_refuses(raw: str, says: str) -> None:
    with pytest.raises(SettingsError) as e:
        load({"PAW_CALLBACKS": raw})
    assert says in str(e.value) and "whsec_a2tr" not in str(e.value)


# -- SSRF --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    [
        "169.254.169.254",
        "169.254.0.1",
        "fe80::1",
        "fd00:ec2::254",
        "100.100.100.200",
        "168.63.129.16",
        "0.0.0.0",  # noqa: S104 - an address refused, not bound
        "::",
        "224.0.0.1",
        "240.0.0.1",
        "::ffff:169.254.169.254",
        "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
    ],
)
def test_link_local_and_metadata_are_refused_even_when_private_targets_are_allowed(address: str) -> None:
    assert address_refusal(address, allow_private=True) is not None
    assert address_refusal(address, allow_private=False) is not None


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1", "::1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "fd12::1", "100.64.0.1", "::ffff:10.0.0.1"],
)
def test_private_targets_only_when_allowed(address: str) -> None:
    assert "PAW_CALLBACK_ALLOW_PRIVATE" in (address_refusal(address, allow_private=False) or "")
    assert address_refusal(address, allow_private=True) is None


def test_public_addresses_and_names_pass_the_static_check() -> None:
    assert address_refusal("93.184.216.34", allow_private=False) is None
    assert address_refusal("2606:2800:220:1::1", allow_private=False) is None
    assert url_refusal("https://hooks.example.com/paw", allow_private=False) is None
    assert url_refusal("http://127.0.0.1:8080/x", allow_private=False) is not None
    assert url_refusal("http://METADATA.google.internal./x", allow_private=True) is not None
    assert url_refusal("file:///etc/passwd", allow_private=True) is not None


# -- the HTTP client against a local server ----------------------------------------------------


@pytest.fixture
async def local() -> AsyncIterator[tuple[str, list[str]]]:
    hits: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        hits.append(request.path)
        if request.path == "/redirect":
            raise web.HTTPFound("/elsewhere")
        if request.path == "/busy":
            return web.Response(status=503, headers={"Retry-After": "7"})
        return web.Response(status=204)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"127.0.0.1:{port}", hits
    finally:
        await runner.cleanup()


async def test_the_client_follows_no_redirect_and_reports_the_status(local: tuple[str, list[str]]) -> None:
    hostport, hits = local
    client = CallbackClient(timeout=5, allow_private=True)
    try:
        assert await client.post(f"http://{hostport}/ok", b"{}", {}) == 204
        with pytest.raises(CallbackFailed) as e:
            await client.post(f"http://{hostport}/redirect", b"{}", {})
        assert e.value.error_code == "CALLBACK_HTTP_302" and "not followed" in str(e.value)
        with pytest.raises(CallbackFailed) as e:
            await client.post(f"http://{hostport}/busy", b"{}", {})
        assert (e.value.error_code, e.value.retry_after) == ("CALLBACK_HTTP_503", 7.0)
        assert hits == ["/ok", "/redirect", "/busy"]
    finally:
        await client.close()


async def test_the_client_refuses_loopback_by_name_and_by_address(local: tuple[str, list[str]]) -> None:
    hostport, hits = local
    port = hostport.rsplit(":", 1)[1]
    client = CallbackClient(timeout=5, allow_private=False)
    try:
        with pytest.raises(CallbackRefused, match="loopback"):
            await client.post(f"http://localhost:{port}/x", b"{}", {})  # resolved, then refused
        with pytest.raises(CallbackRefused, match="loopback"):
            await client.post(f"http://{hostport}/x", b"{}", {})  # a literal address: never resolved
        assert hits == []
    finally:
        await client.close()


async def test_an_unreachable_callback_is_a_transient_failure() -> None:
    client = CallbackClient(timeout=2, allow_private=True)
    try:
        with pytest.raises(CallbackFailed) as e:
            await client.post("http://127.0.0.1:1/x", b"{}", {})
        assert e.value.error_code == "CALLBACK_UNREACHABLE"
    finally:
        await client.close()


def test_callback_dead_letters_replay_to_their_own_queue() -> None:
    topo = Topology.from_settings(Settings())

    def letter(queue: str, rk: str) -> DeadLetter:
        return DeadLetter.parse(b"{}", {H_QUEUE: queue, H_ROUTING_KEY: rk}, "m")

    assert replay_route(letter("paw.callbacks", "item.state.failed"), topo.replayed_to_own_queue) == (
        "paw.callbacks",
        True,
    )
    assert replay_route(letter("paw.items", "item.link"), topo.replayed_to_own_queue) == ("item.link", False)
    assert topo.callbacks_queue in topo.all_queues() and "paw.callbacks.retry.1000" in topo.all_queues()
