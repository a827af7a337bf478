"""docker-compose.cluster.yml, read (no Docker engine here): docker-compose.yml's services with three
RabbitMQ nodes in place of one, forming one cluster, and paw pointed at all three."""

from __future__ import annotations

import functools
import re
from typing import Any
from urllib.parse import urlsplit

import yaml

from tests.helpers import ROOT
from tests.unit.test_containers import command, environment, pinned
from tests.unit.test_containers import services as single_services
from worker.settings import load

CLUSTER = ROOT / "docker-compose.cluster.yml"
NODES = ("rabbitmq1", "rabbitmq2", "rabbitmq3")


@functools.cache
def services() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = yaml.safe_load(CLUSTER.read_text("utf-8"))["services"]
    return found


def test_it_runs_what_docker_compose_yml_runs_with_three_nodes_for_one() -> None:
    single = single_services()
    assert set(services()) == (set(single) - {"rabbitmq"}) | set(NODES)
    for name, service in services().items():
        if name in NODES:
            continue
        assert command(service) == command(single[name]), name
        env, single_env = environment(service), environment(single[name])
        assert {k: v for k, v in env.items() if k != "AMQP_URL"} == {
            k: v for k, v in single_env.items() if k != "AMQP_URL"
        }, name
        for key in ("image", "build", "ports", "healthcheck", "stop_grace_period", "restart"):
            assert service.get(key) == single[name].get(key), (name, key)


def test_paw_names_every_node_and_waits_for_all_of_them() -> None:
    for name, service in services().items():
        env = environment(service)
        if "AMQP_URL" not in env:
            continue
        urls = load(env).amqp_urls
        assert [(urlsplit(u).hostname, urlsplit(u).port) for u in urls] == [(n, 5672) for n in NODES], name
        if command(service)[0] in ("receiver", "worker"):  # the others need no broker
            depends = service["depends_on"]
            assert all(depends[n]["condition"] == "service_healthy" for n in NODES), name


def cluster_nodes(service: dict[str, Any]) -> list[str]:
    args = environment(service)["RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS"]
    (listed,) = re.findall(r"-rabbit cluster_nodes \{\[([^\]]*)\],disc\}", args)
    return [n.strip("'") for n in listed.split(",")]


def test_the_nodes_form_one_cluster() -> None:
    image = single_services()["rabbitmq"]["image"]
    cookies = set()
    for name in NODES:
        node = services()[name]
        assert node["image"] == image and pinned(image)
        assert node["hostname"] == name  # the node is rabbit@<hostname>
        assert cluster_nodes(node) == [f"rabbit@{n}" for n in NODES]
        assert node["healthcheck"]["test"][:2] == ["CMD", "rabbitmq-diagnostics"]
        cookies.add(environment(node)["RABBITMQ_ERLANG_COOKIE"])
    assert len(cookies) == 1
    # the first node boots alone, the others join it once it is up
    assert "depends_on" not in services()["rabbitmq1"]
    for name in NODES[1:]:
        assert services()[name]["depends_on"] == {"rabbitmq1": {"condition": "service_healthy"}}
