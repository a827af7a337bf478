"""The supervisor's pure decisions: how many processes, which admin port each, when to restart."""

from __future__ import annotations

import pytest

from worker.supervise import Backoff, child_port, cpu_count, pool_share, process_count, restart_delay


@pytest.mark.parametrize(
    ("affinity", "cpu_max", "cores"),
    [
        (2, None, 2),
        (8, "max 100000\n", 8),
        (8, "200000 100000\n", 2),  # a container limited to 2 CPUs on an 8-core host
        (8, "150000 100000", 2),  # 1.5 CPUs: two processes, each gets its share
        (8, "50000 100000", 1),
        (2, "800000 100000", 2),  # a quota above the pinned cores does not add cores
        (0, None, 1),
        (4, "garbage", 4),
    ],
)
def test_cores_are_the_pinned_ones_capped_by_the_cgroup_quota(
    affinity: int, cpu_max: str | None, cores: int
) -> None:
    assert cpu_count(affinity, cpu_max) == cores


def test_zero_processes_means_one_per_core_within_what_the_pool_can_give() -> None:
    assert (process_count(0, 4, 20), process_count(3, 4, 20), process_count(1, 4, 20)) == (4, 3, 1)
    assert process_count(0, 64, 20) == 10  # 2 connections each at least: not 64 x 2 on a big host
    assert process_count(0, 2, 2) == 1 and process_count(12, 2, 2) == 12  # asked for: as asked


def test_children_admin_ports_never_collide_between_worker_receiver_and_console() -> None:
    worker = {child_port(9100, i) for i in range(8)}
    receiver = {child_port(9101, i) for i in range(8)}
    assert len(worker) == len(receiver) == 8 and not worker & receiver and 9102 not in worker | receiver
    assert child_port(9100, 0) == 9100 and child_port(0, 3) == 0  # 0: any free port, for each child


def test_backoff_doubles_to_30_s_and_resets_after_a_minute_up() -> None:
    assert [restart_delay(n) for n in (1, 2, 3, 4, 5, 6, 7)] == [1, 2, 4, 8, 16, 30, 30]
    backoff = Backoff()
    assert [backoff.after_exit(0.5) for _ in range(3)] == [1, 2, 4]
    assert backoff.after_exit(61) == 1  # it ran long enough: a fresh failure, not the fourth in a row
    assert backoff.after_exit(2) == 2


def test_the_pool_setting_is_shared_by_the_processes_of_one_command() -> None:
    assert [pool_share(20, n) for n in (1, 2, 3, 16, 64)] == [20, 10, 7, 2, 2]
    assert pool_share(100, 8) * 8 <= 104  # about the setting in all, never cores x it
