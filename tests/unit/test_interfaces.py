"""docs/openapi.yaml and docs/asyncapi.yaml cannot drift from the code they describe.

The documents reference the JSON Schemas in schemas/messages instead of retyping them; these tests
resolve every reference and compare what it points at with what the code loads, compare the HTTP
routes with the aiohttp router, the bus channels with the topology and the handlers' routing, and
the dead-letter headers with the consumer's constants. No broker or database needed.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urldefrag

import pytest
import yaml
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate as validate_openapi

import schemas
from tests.helpers import ROOT
from webhooks.app import Receiver, create_app
from worker import messages as message_contract
from worker.bus.topology import Topology
from worker.items.states import State
from worker.messages import schema_for
from worker.settings import Settings

OPENAPI_PATH = ROOT / "docs" / "openapi.yaml"
ASYNCAPI_PATH = ROOT / "docs" / "asyncapi.yaml"
MESSAGES_DIR = ROOT / "schemas" / "messages"
HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


@functools.cache
def load(path: Path) -> Any:
    text = path.read_text("utf-8")
    return json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)


def openapi() -> dict[str, Any]:
    doc: dict[str, Any] = load(OPENAPI_PATH)
    return doc


def asyncapi() -> dict[str, Any]:
    doc: dict[str, Any] = load(ASYNCAPI_PATH)
    return doc


# -- References ----------------------------------------------------------------------------------


def pointer(node: Any, fragment: str) -> Any:
    for part in [p for p in fragment.split("/") if p]:
        part = part.replace("~1", "/").replace("~0", "~")
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node


def resolve(ref: str, base: Path) -> tuple[Any, Path]:
    """What ``ref`` (``#/a/b`` or ``file#/a/b``, relative to ``base``) points at, and its file."""
    target, fragment = urldefrag(ref)
    path = (base.parent / target).resolve() if target else base
    return pointer(load(path), fragment), path


def deref(node: Any, base: Path) -> tuple[Any, Path]:
    """Follows ``$ref`` until a node that is not a reference."""
    seen = 0
    while isinstance(node, dict) and "$ref" in node:
        node, base = resolve(node["$ref"], base)
        seen += 1
        assert seen < 20, "reference cycle"
    return node, base


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from refs(value)


def message_file(path: Path) -> str | None:
    """``item.link`` for schemas/messages/item.link.json, else None."""
    if path.parent == MESSAGES_DIR.resolve() and path.suffix == ".json":
        return path.name.removesuffix(".json")
    return None


@pytest.mark.parametrize("path", [OPENAPI_PATH, ASYNCAPI_PATH], ids=["openapi", "asyncapi"])
def test_every_reference_resolves_and_external_ones_are_message_schemas(path: Path) -> None:
    doc_refs = list(refs(load(path)))
    assert doc_refs
    external = set()
    for ref in doc_refs:
        target, file = resolve(ref, path)  # raises KeyError/FileNotFoundError if dangling
        assert target is not None, ref
        if file != path:
            name = message_file(file)
            assert name is not None, f"{ref}: external references may only point into schemas/messages"
            external.add(name)
    assert external, "the document should reference the message schemas, not retype them"


# -- OpenAPI -------------------------------------------------------------------------------------


def test_openapi_is_a_valid_openapi_3_1_document() -> None:
    doc = openapi()
    assert doc["openapi"].startswith("3.1.")
    validate_openapi(doc, base_uri=OPENAPI_PATH.as_uri())


def app_routes() -> set[tuple[str, str]]:
    """(METHOD, path) for every route of the real app. aiohttp adds HEAD to every GET on its own;
    those are left out (the document lists what the handlers implement)."""
    receiver = Receiver(settings=Settings(), publisher=None, store=None, keys=None)  # type: ignore[arg-type]
    app = create_app(receiver)
    found = set()
    for route in app.router.routes():
        resource = route.resource
        assert resource is not None
        found.add((route.method, resource.canonical))
    return {(m, p) for m, p in found if not (m == "HEAD" and ("GET", p) in found)}


def documented_routes() -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, item in openapi()["paths"].items()
        for method in item
        if method in HTTP_METHODS
    }


def test_openapi_documents_exactly_the_routes_the_app_serves() -> None:
    served = app_routes()
    assert ("POST", "/v1/items") in served and ("GET", "/v1/items/{id}") in served
    documented = documented_routes()
    assert served - documented == set(), "served but not documented"
    assert documented - served == set(), "documented but not served"


def operation(path: str, method: str) -> dict[str, Any]:
    op: dict[str, Any] = openapi()["paths"][path][method]
    return op


def request_schema(path: str, method: str = "post") -> Any:
    body, base = deref(operation(path, method)["requestBody"], OPENAPI_PATH)
    schema, _ = deref(body["content"]["application/json"]["schema"], base)
    return schema


def test_item_submission_body_is_the_item_link_message_schema() -> None:
    assert request_schema("/v1/items") == schemas.message_schema("item.link")


@pytest.mark.parametrize("source", ["plaid", "atomic"])
def test_webhook_bodies_are_the_envelopes_webhook_part(source: str) -> None:
    expected = schemas.message_schema(f"webhook.{source}")["properties"]["webhook"]
    assert request_schema(f"/webhooks/{source}") == expected


def test_openapi_headers_and_auth_match_the_receiver() -> None:
    from worker.atomic_api import SIGNATURE_HEADER

    def headers(path: str) -> set[str]:
        return {p["name"] for p in operation(path, "post").get("parameters", []) if p["in"] == "header"}

    assert "Plaid-Verification" in headers("/webhooks/plaid")
    assert SIGNATURE_HEADER in headers("/webhooks/atomic")
    schemes = openapi()["components"]["securitySchemes"]
    for path, item in openapi()["paths"].items():
        for method, op in item.items():
            used = {name for requirement in op.get("security", []) for name in requirement}
            if path.startswith("/v1/"):
                assert used and all(
                    schemes[n] == {**schemes[n], "type": "http", "scheme": "bearer"} for n in used
                )
            else:
                assert used == set(), f"{method.upper()} {path} needs no API key"


def test_openapi_statuses_cover_what_the_handlers_answer() -> None:
    expected = {
        ("/webhooks/plaid", "post"): {"200", "400", "401", "413", "503"},
        ("/webhooks/atomic", "post"): {"200", "400", "401", "413", "503"},
        ("/v1/items", "post"): {"202", "400", "401", "413", "503"},
        ("/v1/items/{id}", "get"): {"200", "401", "404"},
        ("/readyz", "get"): {"200", "503"},
    }
    for (path, method), statuses in expected.items():
        assert statuses <= set(operation(path, method)["responses"]), f"{method.upper()} {path}"
    problem = openapi()["components"]["schemas"]["Problem"]
    assert problem["required"] == ["error"] and set(problem["properties"]) == {"error", "detail"}
    Draft202012Validator(problem).validate({"error": "broker_unavailable", "detail": "not queued"})


def test_openapi_states_are_the_state_machine_states() -> None:
    assert openapi()["components"]["schemas"]["State"]["enum"] == [s.value for s in State]


# -- AsyncAPI ------------------------------------------------------------------------------------


def test_asyncapi_document_structure() -> None:
    doc = asyncapi()
    assert doc["asyncapi"] == "3.0.0"
    assert doc["info"]["title"] and doc["info"]["version"]
    assert {"channels", "operations", "components"} <= set(doc)
    channels, messages = doc["channels"], doc["components"]["messages"]
    for name, channel in channels.items():
        placeholders = set(re.findall(r"\{([^}]+)\}", channel["address"]))
        assert placeholders == set(channel.get("parameters", {})), f"channel {name}: parameters"
        assert channel["messages"], f"channel {name} carries no message"
        for ref in refs(channel["messages"]):
            assert ref.startswith("#/components/messages/") and ref.rsplit("/", 1)[1] in messages
    for name, op in doc["operations"].items():
        assert op["action"] in ("send", "receive"), name
        channel_ref = op["channel"]["$ref"]
        assert channel_ref.startswith("#/channels/") and channel_ref.rsplit("/", 1)[1] in channels
        for message in op["messages"]:  # an operation's messages must be its channel's
            assert message["$ref"].startswith(channel_ref + "/messages/"), name
            resolve(message["$ref"], ASYNCAPI_PATH)
    used = {op["channel"]["$ref"].rsplit("/", 1)[1] for op in doc["operations"].values()}
    assert used == set(channels), "every channel has an operation"


def payload_schema(message: dict[str, Any]) -> tuple[Any, Path]:
    payload = message["payload"]
    if isinstance(payload, dict) and "schema" in payload:  # a Multi Format Schema Object
        assert payload["schemaFormat"].startswith("application/schema+")
        payload = payload["schema"]
    return deref(payload, ASYNCAPI_PATH)


def test_every_message_schema_is_in_asyncapi_exactly_as_the_code_loads_it() -> None:
    found: dict[str, Any] = {}
    for key, message in asyncapi()["components"]["messages"].items():
        schema, file = payload_schema(message)
        name = message_file(file) or next(
            (n for n in schemas.message_names() if schemas.message_schema(n) == schema), None
        )
        if name is None:
            continue
        assert message["name"] == name == schema["title"], key
        assert message["contentType"] == "application/json"
        found[name] = schema
    assert sorted(found) == schemas.message_names()
    for name, schema in found.items():
        assert schema == schemas.message_schema(name)
        assert schema == json.loads((MESSAGES_DIR / f"{name}.json").read_text("utf-8"))


def test_asyncapi_examples_are_valid_messages() -> None:
    checked = 0
    for message in asyncapi()["components"]["messages"].values():
        for example in message.get("examples", []):
            schemas.validator(message["name"]).validate(example["payload"])
            checked += 1
    assert checked


def binding(channel: dict[str, Any]) -> dict[str, Any]:
    bindings, _ = deref(channel["bindings"], ASYNCAPI_PATH)
    amqp: dict[str, Any] = bindings["amqp"]
    return amqp


def sample_address(channel: dict[str, Any]) -> str:
    """The address with each parameter filled by its first enum value, else an upper-case code."""
    params = channel.get("parameters", {})

    def fill(m: re.Match[str]) -> str:
        enum = params[m[1]].get("enum")
        return str(enum[0]) if enum else "SAMPLE_CODE"

    return re.sub(r"\{([^}]+)\}", fill, channel["address"])


def topic_matches(binding_key: str, routing_key: str) -> bool:
    pattern = re.escape(binding_key).replace(r"\#", ".*").replace(r"\*", "[^.]+")
    return re.fullmatch(pattern, routing_key) is not None


def channel_message_names(channel: dict[str, Any]) -> set[str]:
    return {deref(m, ASYNCAPI_PATH)[0]["name"] for m in channel["messages"].values()}


def test_asyncapi_channels_match_the_topology_and_the_handlers() -> None:
    # as where callbacks are configured (without, paw.callbacks is not bound: the outcome events
    # reach the upstream apps' own queues only)
    topo = dataclasses.replace(Topology.from_settings(Settings()), callbacks_bound=True)
    exchange_channels, queue_channels = {}, {}
    for name, channel in asyncapi()["channels"].items():
        amqp = binding(channel)
        assert amqp["bindingVersion"] == "0.3.0"
        if amqp["is"] == "routingKey":
            assert amqp["exchange"] == {
                **amqp["exchange"],
                "name": topo.exchange,
                "type": "topic",
                "durable": True,
            }
            exchange_channels[name] = channel
        else:
            assert amqp["is"] == "queue" and amqp["queue"]["name"] == channel["address"]
            queue_channels[channel["address"]] = channel
    # Each routing key reaches the handler for the schema the document says it carries ...
    routed: dict[str, set[str]] = {q: set() for q in topo.consumed_queues}
    for name, channel in exchange_channels.items():
        key = sample_address(channel)
        (message,) = channel_message_names(channel)
        queues = [q for q, bs in topo.consumed_queues.items() if any(topic_matches(b, key) for b in bs)]
        if message == "item.state":  # an outcome event: never a work queue's, only paw's event queues'
            assert set(queues) == set(topo.event_queues), f"{key} reaches {queues}"
        else:
            assert schema_for(key) == message, f"{name}: {key} is handled as {schema_for(key)}"
            assert len(queues) == 1, f"{key} must reach exactly one work queue, reaches {queues}"
            assert queues[0] in topo.work_queues
        for queue in queues:
            routed[queue].add(message)
    # ... and lands in the queue whose channel lists that message; the parked queue has no binding
    assert routed[topo.parked_queue] == set()
    routed[topo.parked_queue] = {"parked-result"}
    for queue, messages in routed.items():
        assert channel_message_names(queue_channels[queue]) == messages, queue
    assert topo.dead_queue in queue_channels
    retry = next(c for a, c in queue_channels.items() if ".retry." in a)
    assert set(retry["parameters"]["work_queue"]["enum"]) == set(topo.consumed_queues)
    concrete = {a for a in queue_channels if "{" not in a}
    assert concrete <= set(topo.all_queues())


def test_dead_letter_headers_are_the_message_constants() -> None:
    constants = {v for k, v in vars(message_contract).items() if k.startswith("H_") and isinstance(v, str)}
    assert len(constants) >= 9
    messages = asyncapi()["components"]["messages"]
    for key in ("deadLetter", "retry"):
        headers, _ = deref(messages[key]["headers"], ASYNCAPI_PATH)
        assert set(headers["properties"]) == constants, key
        assert set(headers["required"]) <= constants
    dead = asyncapi()["channels"]["deadLetters"]
    assert dead["address"] == Topology.from_settings(Settings()).dead_queue


def test_asyncapi_documents_least_privilege_for_upstream_publishers() -> None:
    text = asyncapi()["info"]["description"]
    perms = re.search(r"set_permissions -p / (\S+) '([^']*)' '([^']*)' '([^']*)'", text)
    assert perms, "the rabbitmqctl set_permissions line"
    user, configure, write, read = perms.groups()
    exchange = Topology.from_settings(Settings()).exchange
    assert configure == "^$" and read == "^$"
    assert re.search(write, exchange) and not any(
        re.search(write, name)
        for name in [*Topology.from_settings(Settings()).all_queues(), "", exchange + "x"]
    )
    topic = re.search(rf"set_topic_permissions -p / {re.escape(user)} (\S+) '([^']*)' '([^']*)'", text)
    assert topic, "the rabbitmqctl set_topic_permissions line"
    assert topic[1] == exchange and topic[3] == "^$"
    assert re.search(topic[2], "item.link") and not any(
        re.search(topic[2], key) for key in ("item.drive", "webhook.plaid.ITEM.ERROR", "item.linked")
    )


# -- OpenAPI examples and limits -----------------------------------------------------------------


def openapi_validator(schema_ref: str) -> Draft202012Validator:
    """A validator for the document's schema at ``schema_ref`` (``#/components/schemas/X``), its
    references into the document and into schemas/messages resolved as they are written."""
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT202012

    def retrieve(uri: str) -> Resource[Any]:
        path = Path(urldefrag(uri)[0].removeprefix("file://"))
        return DRAFT202012.create_resource(load(path))

    base = OPENAPI_PATH.resolve().as_uri()
    registry: Registry[Any] = Registry(retrieve=retrieve).with_resource(  # type: ignore[call-arg]
        base, DRAFT202012.create_resource(openapi())
    )
    return Draft202012Validator({"$ref": base + schema_ref}, registry=registry)


def operations() -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in openapi()["paths"].items():
        for method, op in item.items():
            if method in HTTP_METHODS:
                yield path, method, op


def media_examples(media: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    for name, example in media.get("examples", {}).items():
        example, _ = deref(example, OPENAPI_PATH)
        yield name, example["value"]


def responses_of(op: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for status, response in op["responses"].items():
        yield status, deref(response, OPENAPI_PATH)[0]


def test_every_openapi_example_is_valid_against_its_schema() -> None:
    checked = 0
    for path, method, op in operations():
        escaped = path.replace("~", "~0").replace("/", "~1")
        bodies = []
        if "requestBody" in op:
            body, _ = deref(op["requestBody"], OPENAPI_PATH)
            where = f"#/paths/{escaped}/{method}/requestBody/content/application~1json/schema"
            bodies.append(("request", body["content"]["application/json"], where))
        for status, response in responses_of(op):
            for kind, media in response.get("content", {}).items():
                ref = op["responses"][status].get("$ref")
                where = (
                    f"{ref}/content/{kind.replace('/', '~1')}/schema"
                    if ref
                    else f"#/paths/{escaped}/{method}/responses/{status}/content/{kind.replace('/', '~1')}/schema"
                )
                bodies.append((status, media, where))
        for what, media, where in bodies:
            validator = openapi_validator(where)
            for name, value in media_examples(media):
                errors = list(validator.iter_errors(value))
                assert not errors, f"{method.upper()} {path} {what} example {name}: {errors[0].message}"
                checked += 1
    assert checked >= 25


def test_every_route_documents_overload_and_every_v1_route_the_rate_limit() -> None:
    for path, method, op in operations():
        responses = dict(responses_of(op))
        name = f"{method.upper()} {path}"
        assert "503" in responses, name
        errors = {
            value.get("error")
            for media in responses["503"]["content"].values()
            for _, value in media_examples(media)
        }
        assert "overloaded" in errors, f"{name}: a 503 `overloaded` example"
        if path.startswith("/v1/"):
            limited = responses.get("429")
            assert limited is not None, name
            assert "Retry-After" in limited["headers"], name
            (example,) = [v for m in limited["content"].values() for _, v in media_examples(m)]
            assert example["error"] == "rate_limited", name
        else:
            assert "429" not in responses, f"{name}: only /v1/* is rate limited"


def concrete(path: str) -> str:
    return path.replace("{id}", "5f0c6a52-1d4b-4c1e-9a8e-0f5b2c7d9e11")


async def test_limits_answer_as_documented() -> None:
    """The real app, its limits set so that every request meets them: what comes back is what the
    document says, for every documented route."""
    from aiohttp.test_utils import TestClient, TestServer

    from webhooks.limits import InFlight, TokenBuckets

    settings = Settings()
    auth = {"Authorization": f"Bearer {settings.api_keys[0]}"}
    for limit in ("overloaded", "rate_limited"):
        receiver = Receiver(settings=settings, publisher=None, store=None, keys=None)  # type: ignore[arg-type]
        receiver.in_flight = InFlight(0 if limit == "overloaded" else 10)
        receiver.api_rate = TokenBuckets(rate=1.0, burst=0.0)
        async with TestClient(TestServer(create_app(receiver))) as client:
            for path, method, op in operations():
                if limit == "rate_limited" and not path.startswith("/v1/"):
                    continue
                async with client.request(method.upper(), concrete(path), headers=auth, json={}) as r:
                    body = await r.json()
                    status = "503" if limit == "overloaded" else "429"
                    assert (str(r.status), body["error"]) == (status, limit), f"{method} {path}"
                    response = dict(responses_of(op))[status]
                    documented = [
                        v
                        for m in response["content"].values()
                        for _, v in media_examples(m)
                        if v.get("error") == limit
                    ]
                    assert documented and set(body) == set(documented[0]), f"{method} {path}"
                    if status == "429":  # Retry-After, always (a 503 carries it only from Plaid)
                        assert set(response["headers"]) == {"Retry-After"}, f"{method} {path}"
                        assert r.headers["Retry-After"].isdigit(), f"{method} {path}"


def test_item_summary_is_what_item_public_shows() -> None:
    from tests.fakes import linked_item

    summary = openapi()["components"]["schemas"]["ItemSummary"]
    shown = linked_item(State.ATOMIC_VERIFIED).public()
    assert set(summary["properties"]) == set(shown)
    openapi_validator("#/components/schemas/ItemSummary").validate(json.loads(json.dumps(shown)))


def test_link_options_are_the_settings_choices() -> None:
    from worker.settings import LINK_COUNTRY_CODES, LINK_LANGUAGES

    schemas_ = openapi()["components"]["schemas"]
    assert sorted(schemas_["LinkLanguage"]["enum"]) == sorted(LINK_LANGUAGES)
    assert sorted(schemas_["LinkCountryCodes"]["items"]["enum"]) == sorted(LINK_COUNTRY_CODES)


def test_list_parameters_are_the_ones_the_route_reads() -> None:
    from webhooks.listing import DEFAULT_LIMIT, MAX_LIMIT, PARAMETERS

    params = {p["name"]: p for p in operation("/v1/items", "get")["parameters"]}
    assert set(params) == set(PARAMETERS)
    assert params["limit"]["schema"]["maximum"] == MAX_LIMIT
    assert params["limit"]["schema"]["default"] == DEFAULT_LIMIT


def test_outcome_events_name_every_state_the_item_has() -> None:
    states = [s.value for s in State]
    event = schemas.message_schema("item.state")["properties"]
    assert event["to_state"]["enum"] == states and event["from_state"]["enum"] == [*states, None]
    channel = asyncapi()["channels"]["itemState"]
    assert channel["parameters"]["to_state"]["enum"] == states
