"""The adaptive thread count: it follows the cores other processes leave free."""

import pytest
import torch

from rdd3d.engine import threads


class _Clock:
    """Stands in for ``time``: wall seconds, this process's CPU seconds, and the machine's busy seconds."""

    def __init__(self) -> None:
        self.wall = self.own = self.machine = 0.0

    def monotonic(self) -> float:
        return self.wall

    def process_time(self) -> float:
        return self.own

    def advance(self, seconds: float, own_cores: float, other_cores: float) -> None:
        self.wall += seconds
        self.own += own_cores * seconds
        self.machine += (own_cores + other_cores) * seconds


@pytest.fixture
def clock(monkeypatch):
    fake = _Clock()
    monkeypatch.setattr(threads, "time", fake)
    monkeypatch.setattr(threads, "machine_busy_seconds", lambda: fake.machine)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield fake
    torch.set_num_threads(before)


def test_threads_drop_while_another_process_is_busy_and_come_back(clock):
    governor = threads.ThreadGovernor(interval_s=1.0)
    governor.cores = 2
    assert governor.enabled and governor.update() == 2
    clock.advance(0.5, own_cores=1.2, other_cores=0.7)
    assert governor.update() == 2  # not yet re-measured: less than interval_s has passed
    clock.advance(0.6, own_cores=1.2, other_cores=0.7)
    assert governor.update() == 1 and torch.get_num_threads() == 1
    clock.advance(2.0, own_cores=1.0, other_cores=1.0)
    assert governor.update() == 1
    clock.advance(2.0, own_cores=1.0, other_cores=0.1)  # the other process stopped
    assert governor.update() == 2 and torch.get_num_threads() == 2
    clock.advance(2.0, own_cores=1.0, other_cores=1.0)
    governor.update()
    governor.restore()
    assert torch.get_num_threads() == 2


def test_never_more_than_the_starting_count_nor_less_than_one(clock):
    torch.set_num_threads(1)
    one = threads.ThreadGovernor()
    assert not one.enabled and one.update() == 1
    torch.set_num_threads(2)
    governor = threads.ThreadGovernor()
    governor.cores = 8
    clock.advance(2.0, own_cores=2.0, other_cores=0.0)
    assert governor.update() == 2  # 8 idle cores, still the 2 torch started with
    clock.advance(2.0, own_cores=0.5, other_cores=8.0)
    assert governor.update() == 1


def test_without_proc_stat_it_changes_nothing(monkeypatch):
    monkeypatch.setattr(threads, "machine_busy_seconds", lambda: None)
    governor = threads.ThreadGovernor()
    assert not governor.enabled and governor.update() == torch.get_num_threads()


def test_proc_stat_is_read_as_busy_seconds():
    busy = threads.machine_busy_seconds()
    assert busy is None or busy > 0
