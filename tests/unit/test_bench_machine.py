"""`bench.machine`: the machine's CPU shares, the host's steal apart from our own work."""

from __future__ import annotations

import pytest

from bench import machine


def test_parse_splits_busy_idle_and_steal() -> None:
    # user nice system idle iowait irq softirq steal guest guest_nice
    t = machine.parse("cpu  100 5 40 800 20 3 2 30 7 0")
    assert t == machine.Ticks(busy=100 + 5 + 40 + 3 + 2, idle=800 + 20, steal=30)
    assert t.total == 1000  # guest time is inside user already: not counted twice


def test_parse_an_old_kernel_without_a_steal_field() -> None:
    assert machine.parse("cpu 10 0 5 85") == machine.Ticks(busy=15, idle=85, steal=0)


def test_shares_between_two_samples() -> None:
    before = machine.Ticks(busy=1000, idle=5000, steal=100)
    after = machine.Ticks(busy=1600, idle=5200, steal=300)  # 1000 ticks: 600 busy, 200 idle, 200 steal
    shares = machine.shares(before, after)
    assert (shares.busy, shares.steal) == (0.6, 0.2)
    assert shares.as_json() == {"machine_cpu_busy": 0.6, "host_steal": 0.2}
    assert "not a quiet machine" in shares.describe()


def test_a_quiet_run_is_not_flagged() -> None:
    shares = machine.shares(machine.Ticks(0, 0, 0), machine.Ticks(busy=500, idle=490, steal=10))
    assert shares.steal == 0.01
    assert "quiet" not in shares.describe()
    assert shares.describe() == "machine CPU busy 50%, taken by the host (steal) 1%"


def test_unknown_without_proc_stat_or_time_passing() -> None:
    same = machine.Ticks(busy=5, idle=5, steal=0)
    for shares in (machine.shares(None, same), machine.shares(same, None), machine.shares(same, same)):
        assert shares == machine.Shares(None, None)
        assert "unknown" in shares.describe()


def test_this_machine_reads_its_own_proc_stat() -> None:
    first = machine.ticks()
    if first is None:
        pytest.skip("no /proc/stat here (not Linux)")
    assert first.total > 0 and min(first.busy, first.idle, first.steal) >= 0


def test_the_reference_workload_is_fixed_and_timed() -> None:
    # The same result every time: nothing in it depends on the project's code or on chance.
    assert machine._reference_round() == machine._reference_round()
    assert machine.reference_ms(rounds=3) > 0


def test_the_reference_line_names_both_readings() -> None:
    line = machine.describe_reference([9.1, 17.4])
    assert "9.1 ms before" in line and "17.4 ms after" in line
