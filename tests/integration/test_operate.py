"""Operating the worker: admin endpoints, metrics, graceful shutdown on SIGTERM, paw status."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from sandbox.app import SandboxConfig
from tests.helpers import (
    ROOT,
    Sandbox,
    eventually,
    free_port,
    new_public_token,
    paw_env,
    run_paw,
    settled,
    stored_item,
    submit_amqp,
)
from worker.bus.topology import Topology
from worker.items.states import State
from worker.runner import Gauges, run_worker
from worker.services import Services
from worker.settings import Settings
from worker.status import read_queues


@pytest.fixture
def sandbox_config(sandbox_config_for_receiver: SandboxConfig) -> SandboxConfig:
    return sandbox_config_for_receiver


async def start_worker(settings: Settings, admin_port: int) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "worker.cli",
        "worker",
        env=paw_env(settings, PAW_ADMIN_PORT=str(admin_port)),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )

    async def ready() -> bool:
        try:
            async with (
                aiohttp.ClientSession() as http,
                http.get(f"http://127.0.0.1:{admin_port}/readyz") as r,
            ):
                return r.status == 200
        except aiohttp.ClientError:
            assert proc.returncode is None, "worker exited"
            return False

    await eventually(ready, timeout=20)
    return proc


async def get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http, http.get(url) as r:
        return r.status, await r.text()


async def test_worker_admin_endpoints_and_metrics(
    settings: Settings, services: Services, receiver: str, sandbox: Sandbox
) -> None:
    port = free_port()
    proc = await start_worker(settings, port)
    try:
        assert (await get(f"http://127.0.0.1:{port}/healthz"))[0] == 200
        status, body = await get(f"http://127.0.0.1:{port}/readyz")
        assert status == 200 and json.loads(body)["checks"] == {"broker": True, "database": True}
        token = await new_public_token(sandbox)
        await submit_amqp(services, {"public_token": token, "client_user_id": "u-metrics"})
        await settled(services, token, State.ATOMIC_VERIFIED)

        async def scraped() -> str | None:
            _, text = await get(f"http://127.0.0.1:{port}/metrics")
            wanted = 'paw_transitions_total{from_state="atomic_pending",to_state="atomic_verified"} 1.0'
            return text if wanted in text else None

        text = await eventually(scraped)
        assert 'paw_events_processed_total{kind="item.link",outcome="acked"} 1.0' in text
        assert (
            'paw_upstream_seconds_count{endpoint="/item/public_token/exchange",service="plaid"} 1.0' in text
        )
        assert 'paw_upstream_seconds_count{endpoint="/v1/funding_sources",service="atomic"} 1.0' in text
        assert "paw_upstream_up{" not in text  # the receiver's gauge: no sample in the worker
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 30)


async def test_sigterm_under_load_loses_nothing_and_leaves_nothing_unacked(
    settings: Settings, services: Services, receiver: str, sandbox: Sandbox
) -> None:
    sandbox.state.set_latency(None, 150)  # every Plaid and Atomic call takes 150 ms: many Items in flight
    port = free_port()
    proc = await start_worker(settings, port)
    tokens = [await new_public_token(sandbox) for _ in range(40)]
    for i, t in enumerate(tokens):
        await submit_amqp(services, {"public_token": t, "client_user_id": f"u-term-{i}"})

    async def some_in_flight() -> bool:
        return sandbox.state.calls["/item/public_token/exchange"] >= 5

    await eventually(some_in_flight)
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    await asyncio.wait_for(proc.wait(), 40)
    stopped_in = time.monotonic() - started
    _, stderr = await proc.communicate()
    assert proc.returncode == 0
    lines = [json.loads(line) for line in stderr.decode().splitlines() if line.startswith("{")]
    stopped = next(e for e in lines if e["event"] == "worker.stopped")
    assert stopped["requeued"] == 0
    assert not any(e["event"] == "worker.drain_timeout" for e in lines)  # it finished what it held
    # and published the outcome events of what it finished before it exited
    assert stopped["outcome_events"] > 0 and await services.store.outbox_backlog() == (0, 0.0)
    # nothing is left unacked on the broker, and every Item still finishes with one funding source
    channel = await services.connection.channel()
    queue = await channel.declare_queue(services.topo.items_queue, passive=True)
    assert queue.declaration_result.consumer_count == 0
    await channel.close()
    sandbox.state.set_latency(None, 0)
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(run_worker(services, stop, ready=ready))
    await ready.wait()
    try:
        for t in tokens:
            item = await settled(services, t, State.ATOMIC_VERIFIED)
            assert sandbox.state.atomic_funding_sources(str(item.id)) == 1
            history = await services.store.history(item.id)
            assert [h.to_state for h in history].count("atomic_verified") == 1
    finally:
        stop.set()
        await task
    assert stopped_in < 35


async def test_paw_status_shows_the_on_call_screen(
    settings: Settings, services: Services, worker: Any, receiver: str, sandbox: Sandbox
) -> None:
    token = await new_public_token(sandbox)
    await submit_amqp(services, {"public_token": token, "client_user_id": "u-status"})
    await settled(services, token, State.ATOMIC_VERIFIED)
    code, out, err = await run_paw(settings, "status", "--check", timeout=30)
    assert (code, out.decode()) == (0, "OK: every queue consumed, no dead letters, nothing stuck\n"), err
    await services.publisher.publish(services.topo.dead_queue, b"{}", to_queue=True)  # not indexed
    code, out, err = await run_paw(settings, "status", "--check", timeout=30)
    assert (code, out.decode()) == (
        1,
        "WARNING: 1 dead letter(s): paw dlq list; 1 dead letter(s) not indexed: paw dlq reindex\n",
    ), err
    assert (await run_paw(settings, "dlq", "reindex", timeout=30))[0] == 0
    code, out, err = await run_paw(settings, "status", "--json", timeout=30)
    assert code == 1, err.decode()
    status = json.loads(out)
    assert status["check"] == {"code": 1, "line": "WARNING: 1 dead letter(s) (unknown 1): paw dlq list"}
    assert status["dead_letters_by_reason"] == {"unknown": 1} and status["dead_letters_unindexed"] == 0
    assert status["items"] == {"atomic_verified": 1}
    assert status["dead_letters"] == 1
    assert set(status["queues"]) == set(services.topo.consumed_queues)
    assert {q["consumers"] for q in status["queues"].values()} == {1}  # the worker's consumer on each
    assert status["missing_queues"] == [] and status["outbox"] == {"unsent": 0, "oldest_s": 0.0}
    assert status["last_webhook"]["routing_key"] == "webhook.atomic.verified"
    code, out, _ = await run_paw(settings, "status", timeout=30)  # the screen says the same
    assert code == 1 and "WARNING: 1 dead letter(s)" in out.decode()
    # what the receiver saw, as it reported it: the Atomic webhook, and a forged one refused
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{receiver}/webhooks/atomic", data=b"{}", headers={"X-Atomic-Signature": "forged"}
        ) as r:
            assert r.status == 401

    async def reported() -> dict[str, Any] | None:
        _, out, _ = await run_paw(settings, "status", "--json", timeout=30)
        shown = json.loads(out)
        seen = {(w["source"], w["outcome"], w["reason"]): w["count"] for w in shown["webhooks_last_hour"]}
        return shown if seen.get(("atomic", "rejected", "bad_signature")) == 1 else None

    shown = await eventually(reported, timeout=20, interval=0.5)
    seen = {(w["source"], w["outcome"], w["reason"]): w["count"] for w in shown["webhooks_last_hour"]}
    assert seen[("atomic", "received", "")] >= 2 and seen[("atomic", "accepted", "")] >= 1
    assert "atomic" in shown["last_webhook_received"]


async def test_paw_status_without_workers_is_critical_and_a_wrong_prefix_creates_nothing(
    settings: Settings, services: Services
) -> None:
    code, out, _ = await run_paw(settings, "status", "--check", timeout=30)
    assert code == 2
    assert out.decode().startswith(f"CRITICAL: no consumer on {services.topo.items_queue}; ")
    typo = dataclasses.replace(settings, queue_prefix=settings.queue_prefix + "-typo")
    code, out, _ = await run_paw(typo, "status", "--check", timeout=30)
    assert code == 2 and f"is PAW_QUEUE_PREFIX={typo.queue_prefix} right?" in out.decode()
    code, _, _ = await run_paw(typo, "status", "--json", timeout=30)
    assert code == 2
    # nothing of the mistyped topology exists: not one queue was declared
    topo = Topology.from_settings(typo)
    existing = await read_queues(services.connection, topo.all_queues())
    assert existing == dict.fromkeys(topo.all_queues())


async def test_receiver_process_serves_metrics_and_stops_on_sigterm(
    settings: Settings, sandbox: Sandbox
) -> None:
    port, admin = free_port(), free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "worker.cli",
        "receiver",
        "--port",
        str(port),
        "--admin-port",
        str(admin),
        env=paw_env(settings),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:

        async def ready() -> bool:
            try:
                return (await get(f"http://127.0.0.1:{admin}/readyz"))[0] == 200
            except aiohttp.ClientError:
                assert proc.returncode is None, "receiver exited"
                return False

        await eventually(ready, timeout=20)
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                f"http://127.0.0.1:{port}/webhooks/atomic",
                data=b"{}",
                headers={"X-Atomic-Signature": "sha256=00"},
            ) as r,
        ):
            assert r.status == 401
        _, text = await get(f"http://127.0.0.1:{admin}/metrics")
        assert 'paw_webhooks_rejected_total{reason="bad_signature",source="atomic"} 1.0' in text
        assert 'paw_webhooks_received_total{source="atomic"} 1.0' in text
        assert 'paw_upstream_up{endpoint="/webhook_verification_key/get",service="plaid"} 1.0' in text
        status, body = await get(f"http://127.0.0.1:{admin}/healthz")
        assert (status, json.loads(body)) == (
            200,
            {"status": "ok", "plaid_keys": {"ok": True, "last_failure_s_ago": None}},
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 20)
    _, stderr = await proc.communicate()
    assert proc.returncode == 0
    assert b"receiver.stopped" in stderr


async def test_queue_gauges_follow_the_queues_from_one_refresh_to_the_next(services: Services) -> None:
    """aio-pika's robust channel answers a repeated passive declare from its cache: the gauges must
    not (they keep their channel between refreshes)."""
    gauges = Gauges(services)
    queue = services.topo.items_queue

    def depth() -> float | None:
        return REGISTRY.get_sample_value("paw_queue_depth", {"queue": queue})

    try:
        await gauges.refresh()
        assert depth() == 0
        for n in range(3):
            await services.publisher.publish("item.drive", b"{}", message_id=f"m-{n}")

        async def three() -> bool:
            await gauges.refresh()
            return depth() == 3

        await eventually(three, timeout=5)
    finally:
        await gauges.close()


def deployment_gauges(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The deployment-wide gauges in one /metrics page: (name, labels) -> value."""
    found = {}
    for family in text_string_to_metric_families(text):
        if family.name in ("paw_items", "paw_queue_consumers", "paw_dlq_depth"):
            for sample in family.samples:
                found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def evaluate_dashboard_queries(
    pages: list[dict[tuple[str, tuple[tuple[str, str], ...]], float]],
    truth: dict[str, dict[tuple[tuple[str, str], ...], float]],
    tmp_path: Path,
) -> None:
    """Evaluates the dashboard's own queries with promtool over what every worker exported (each
    page an instance) and checks they give ``truth``."""
    dashboard = json.loads((ROOT / "docs" / "grafana-dashboard.json").read_text())
    exprs = {t["expr"] for panel in dashboard["panels"] for t in panel["targets"]}
    assert set(truth) <= exprs, set(truth) - exprs
    series = []
    for n, page in enumerate(pages):
        for (name, labels), value in page.items():
            shown = ", ".join(f'{k}="{v}"' for k, v in (("instance", f"worker-{n}"), *labels))
            series.append({"series": f"{name}{{{shown}}}", "values": f"{value:g}x5"})
    tests = [
        {
            "interval": "1m",
            "input_series": series,
            "promql_expr_test": [
                {
                    "expr": expr,
                    "eval_time": "2m",
                    "exp_samples": [
                        {"labels": "{" + ", ".join(f'{k}="{v}"' for k, v in labels) + "}", "value": value}
                        for labels, value in want.items()
                    ],
                }
                for expr, want in truth.items()
            ],
        }
    ]
    spec = tmp_path / "dashboard_test.yaml"
    spec.write_text(yaml.safe_dump({"rule_files": [], "evaluation_interval": "1m", "tests": tests}))
    tool = shutil.which("promtool")
    assert tool is not None, "promtool is missing: `./run test` installs it"
    done = subprocess.run([tool, "test", "rules", str(spec)], capture_output=True, text=True, timeout=120)  # noqa: S603
    assert done.returncode == 0, done.stdout + done.stderr


async def test_three_workers_export_the_deployment_gauges_once_and_hand_over(
    settings: Settings, services: Services, tmp_path: Path
) -> None:
    for n in range(3):  # Items waiting in link: the truth the gauges must show once
        await stored_item(services, f"u-gauge-{n}")
    ports = [free_port() for _ in range(3)]
    procs = []
    for n, port in enumerate(ports):
        with (tmp_path / f"worker-{n}.log").open("wb") as out:
            procs.append(
                await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "worker.cli",
                    "worker",
                    env=paw_env(settings, PAW_ADMIN_PORT=str(port)),
                    stdout=out,
                    stderr=out,
                )
            )
    items = ("paw_items", (("state", "link"),))
    # every consumed queue: a worker attaches its consumers one queue at a time, so the items queue
    # alone can show three consumers while another still shows two
    consumers = [("paw_queue_consumers", (("queue", q),)) for q in services.topo.consumed_queues]

    async def scrape(alive: list[int]) -> list[dict[tuple[str, tuple[tuple[str, str], ...]], float]] | None:
        pages = []
        for n in alive:
            try:
                _, text = await get(f"http://127.0.0.1:{ports[n]}/metrics")
            except aiohttp.ClientError:
                return None
            pages.append(deployment_gauges(text))
        return pages

    def exporters(pages: list[dict[Any, float]]) -> list[int]:
        return [n for n, page in enumerate(pages) if items in page]

    try:

        async def one_exporter_with_the_truth(alive: list[int], workers: int) -> list[int] | None:
            pages = await scrape(alive)
            if pages is None or len(exporters(pages)) != 1:
                return None
            # summed over every scraped worker, as the dashboard does: the truth, not N times it
            total = {key: sum(page.get(key, 0) for page in pages) for key in (items, *consumers)}
            if total != {items: 3, **dict.fromkeys(consumers, workers)}:
                return None
            return [alive[n] for n in exporters(pages)]

        (holder,) = await eventually(
            lambda: one_exporter_with_the_truth([0, 1, 2], 3), timeout=30, interval=0.5
        )
        pages = await scrape([0, 1, 2])
        assert pages is not None
        truth = {
            "sum by (state) (paw_items)": {
                (("state", st.value),): 3 if st is State.LINK else 0 for st in State
            },
            "sum by (queue) (paw_queue_consumers)": {
                (("queue", q),): 3 for q in services.topo.consumed_queues
            },
            "sum(paw_dlq_depth)": {(): 0},
        }
        evaluate_dashboard_queries(pages, truth, tmp_path)
        procs[holder].send_signal(signal.SIGKILL)
        await procs[holder].wait()
        rest = [n for n in range(3) if n != holder]
        (taker,) = await eventually(lambda: one_exporter_with_the_truth(rest, 2), timeout=30, interval=0.5)
        assert taker != holder
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            await asyncio.wait_for(proc.wait(), 40)


async def test_paw_status_that_cannot_read_is_critical_in_one_line(settings: Settings) -> None:
    away = dataclasses.replace(settings, database_url="postgresql://postgres@127.0.0.1:1/nowhere")
    code, out, _ = await run_paw(away, "status", "--check", timeout=30)
    assert code == 2 and out.decode().startswith("CRITICAL: cannot read the status: ")
    assert out.decode().count("\n") == 1
