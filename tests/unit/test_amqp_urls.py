"""AMQP_URL naming a cluster's nodes: parsed and checked node by node, shown without any password, and
walked by the connection in turn (no broker needed: nothing listens where these point)."""

from __future__ import annotations

import asyncio

import pytest
from yarl import URL

from worker.bus.failover import NEXT_NODE_PAUSE_S, OPENED_PAUSE_S, FailoverConnection
from worker.errors import SettingsError, Unreachable
from worker.logs import effective_config
from worker.reach import RABBITMQ, naming
from worker.settings import ENV, load, show

CLUSTER = "amqp://paw:pw-one@mq1:5672/paw, amqp://paw:pw-two@mq2:5673/paw ,amqps://paw:pw-three@mq3/paw"


def test_several_nodes_are_read_in_their_order() -> None:
    s = load({"AMQP_URL": CLUSTER})
    assert s.amqp_urls == (
        "amqp://paw:pw-one@mq1:5672/paw",
        "amqp://paw:pw-two@mq2:5673/paw",
        "amqps://paw:pw-three@mq3/paw",
    )
    assert s.amqp_url == ",".join(s.amqp_urls)  # what a subprocess is given back as AMQP_URL


def test_a_comma_in_a_password_separates_nothing() -> None:
    s = load({"AMQP_URL": "amqp://paw:pa,ss@mq1/,amqp://paw:pa,ss@mq2/"})
    assert s.amqp_urls == ("amqp://paw:pa,ss@mq1/", "amqp://paw:pa,ss@mq2/")
    assert show(ENV["AMQP_URL"], s.amqp_url) == "amqp://paw:***@mq1/,amqp://paw:***@mq2/"
    assert load({"AMQP_URL": "amqp://paw:pa,ss@mq1/"}).amqp_urls == ("amqp://paw:pa,ss@mq1/",)


def test_one_node_is_as_before() -> None:
    s = load({"AMQP_URL": " amqp://guest:guest@127.0.0.1:5672/ "})
    assert s.amqp_url == "amqp://guest:guest@127.0.0.1:5672/"
    assert s.amqp_urls == (s.amqp_url,)
    assert load({}).amqp_urls == ("amqp://guest:guest@127.0.0.1:5672/",)


@pytest.mark.parametrize(
    ("raw", "said"),
    [
        (
            "amqp://mq1/,http://mq2/",
            "AMQP_URL (node 2) must be a URL with a host, starting amqp:// or amqps://",
        ),
        ("amqp://mq1/,,amqp://mq2/", "AMQP_URL must list node URLs separated by single commas"),
        ("amqp://mq1/,", "AMQP_URL must list node URLs separated by single commas"),
        ("amqp://mq1/,mq2:5672", "AMQP_URL must give each node a URL of its own (amqp://...)"),
        ("amqp://mq1,mq2/", "AMQP_URL must give each node a URL of its own (amqp://...)"),
        ("amqp://mq1/, amqp://mq1/", "AMQP_URL names a node twice"),
        ("amqp://u:secret-pw@mq1:99999/,amqp://mq2/", "AMQP_URL (node 1) must be a URL"),
    ],
)
def test_a_bad_node_is_named_by_its_place(raw: str, said: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load({"AMQP_URL": raw})
    (problem,) = caught.value.problems
    assert problem.startswith(said), problem
    assert "secret-pw" not in problem


def test_every_nodes_password_is_masked_wherever_shown() -> None:
    s = load({"AMQP_URL": CLUSTER})
    shown = show(ENV["AMQP_URL"], s.amqp_url)
    assert shown == "amqp://paw:***@mq1:5672/paw,amqp://paw:***@mq2:5673/paw,amqps://paw:***@mq3/paw"
    broker = effective_config(s)["broker"]
    assert broker == "amqp://mq1:5672/paw,amqp://mq2:5673/paw,amqps://mq3:5671/paw"
    assert not any(pw in shown + broker for pw in ("pw-one", "pw-two", "pw-three"))


def test_a_cluster_that_refuses_is_named_node_by_node() -> None:
    s = load({"AMQP_URL": "amqp://paw:pw-one@mq1:5672/paw,amqp://paw:pw-two@mq2:5673/paw"})
    with pytest.raises(Unreachable) as caught, naming(RABBITMQ, *s.amqp_urls):
        raise ConnectionRefusedError(111, "Connection refused")
    assert str(caught.value) == "RabbitMQ at mq1:5672/paw, mq2:5673/paw (AMQP_URL) refused the connection"


async def test_the_connection_walks_the_nodes_and_pauses_only_after_a_round() -> None:
    nodes = [URL(f"amqp://guest:guest@127.0.0.1:{port}/") for port in (1, 2, 3)]
    conn = FailoverConnection(nodes[0], nodes)
    closed = asyncio.get_running_loop().create_future()
    closed.set_exception(ConnectionRefusedError())
    assert conn.reconnect_interval == OPENED_PAUSE_S  # connected: a loss is acted on within a second
    seen, pauses = [conn.url.port], []
    for _ in range(6):  # the node in use goes away, then every attempt fails
        await conn._on_connection_close(closed)
        seen.append(conn.url.port)
        pauses.append(conn.reconnect_interval)
    assert seen == [1, 2, 3, 1, 2, 3, 1]
    assert pauses == [NEXT_NODE_PAUSE_S, NEXT_NODE_PAUSE_S, 5, NEXT_NODE_PAUSE_S, NEXT_NODE_PAUSE_S, 5]
    await conn.close()


async def test_a_publish_waits_for_the_failover_only_while_a_node_is_left_to_try() -> None:
    nodes = [URL(f"amqp://guest:guest@127.0.0.1:{port}/") for port in (1, 2)]
    conn = FailoverConnection(nodes[0], nodes)
    closed = asyncio.get_running_loop().create_future()
    closed.set_exception(ConnectionResetError())
    assert conn.trying_nodes
    await conn._on_connection_close(closed)  # node 1 went away: node 2 is next
    assert conn.trying_nodes
    await conn._on_connection_close(closed)  # node 2 refused
    assert conn.trying_nodes  # node 1 again: it may be back
    await conn._on_connection_close(closed)  # a whole round refused: the cluster is away
    assert not conn.trying_nodes
    await conn.close()
    assert not conn.trying_nodes
