"""CPU threads: each of several processes on one machine takes its share of the cores."""

from __future__ import annotations

import os

import pytest
import torch

from multitune.runtime import configure_cpu_threads, cpu_threads_per_process


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_processes_on_one_machine_share_its_cores(monkeypatch, restore_threads):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setattr(os, "sched_getaffinity", lambda _: set(range(8)))
    assert configure_cpu_threads() == "CPU threads: 4 per process (8 cores, 2 processes here)"
    assert torch.get_num_threads() == 4


def test_a_single_process_takes_every_core(monkeypatch, restore_threads):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda _: {0, 1})
    assert configure_cpu_threads() == "CPU threads: 2 per process (2 cores, 1 process here)"
    assert torch.get_num_threads() == 2


def test_an_explicit_omp_num_threads_is_left_alone(monkeypatch, restore_threads):
    torch.set_num_threads(1)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert configure_cpu_threads() is None
    assert torch.get_num_threads() == 1


def test_never_fewer_than_one_thread():
    assert cpu_threads_per_process(2, 3) == 1
    assert cpu_threads_per_process(0, 1) == 1


def test_print0_prints_on_the_main_process_only(capsys):
    from types import SimpleNamespace

    from multitune.runtime import print0

    print0(SimpleNamespace(is_main_process=True), "a", 1, sep="-")
    print0(SimpleNamespace(is_main_process=False), "b")
    assert capsys.readouterr().out == "a-1\n"
