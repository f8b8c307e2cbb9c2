"""How speed and training-time numbers are recorded: suspension, sweep settings, machine record."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from emotion.profiling import machine_record, speed_settings
from emotion.runs import running_rate, running_time_s
from emotion.progress import SuspensionClock
from emotion.results import training_columns

CLOCK_SCRIPT = """
import sys, time
from emotion.progress import SuspensionClock
with SuspensionClock(tick_s=0.1, gap_s=1.0) as clock:
    print("ready", flush=True)
    time.sleep(float(sys.argv[1]))
print(f"{clock.suspended_s:.2f} {clock.pauses}", flush=True)
"""


@pytest.mark.skipif(not hasattr(signal, "SIGSTOP"), reason="needs POSIX job-control signals")
def test_suspension_clock_counts_the_time_the_process_was_stopped():
    proc = subprocess.Popen([sys.executable, "-c", CLOCK_SCRIPT, "4"], stdout=subprocess.PIPE, text=True,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.5)
        os.kill(proc.pid, signal.SIGSTOP)
        time.sleep(2.5)
        os.kill(proc.pid, signal.SIGCONT)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    suspended, pauses = out.split()
    assert int(pauses) == 1
    assert 2.0 <= float(suspended) <= 3.5


def test_suspension_clock_counts_nothing_for_a_process_that_ran_throughout():
    with SuspensionClock(tick_s=0.05, gap_s=1.0) as clock:
        time.sleep(0.4)
    assert clock.suspended_s == 0.0 and clock.pauses == 0
    assert not clock._thread.is_alive()


def test_training_minutes_leave_out_suspended_time():
    assert training_columns({"train_time_s": 1800.0, "suspended_s": 600.0})["train_min"] == 20.0
    # results written before training recorded it carry a hand-measured paused_s
    assert training_columns({"train_time_s": 1846.4, "paused_s": 72})["train_min"] == 29.6
    assert training_columns({"train_time_s": 60.0})["train_min"] == 1.0
    assert training_columns(None)["train_min"] is None
    assert running_time_s({"train_time_s": 1120.6, "suspended_s": 345.9}) == 774.7
    assert running_time_s({"train_time_s": 60.0}) == 60.0 and running_time_s({}) is None


def test_training_images_per_second_leave_out_suspended_time():
    # 1,000 s of wall time, 250 of them suspended: 60 images/s over the wall is 80 over the running time
    assert running_rate(60.0, 1000.0, 250.0) == 80.0
    assert running_rate(60.0, 1000.0, 0.0) == 60.0 and running_rate(60.0, None, 5.0) == 60.0
    assert running_rate(60.0, 10.0, 10.0) == 60.0  # nothing left to divide by: the wall rate stays


def test_speed_settings_set_torch_threads_for_each_setting():
    before = torch.get_num_threads()
    seen = []
    try:
        for detector, backend, threads in speed_settings("mtcnn, blazeface", "torch,onnx", "1,2"):
            assert torch.get_num_threads() == threads
            seen.append((detector, backend, threads))
    finally:
        torch.set_num_threads(before)
    assert seen == [(d, b, t) for d in ("mtcnn", "blazeface") for b in ("torch", "onnx") for t in (1, 2)]


def test_machine_record_names_the_cpu_and_the_load_around_the_timing():
    record = machine_record((0.5, 0.25, 0.125))
    assert record["load_average_before"] == [round(v, 2) for v in (0.5, 0.25, 0.125)]
    assert len(record["load_average_after"]) == 3
    assert record["cpu"] and record["cpus"] >= 1 and record["torch"] == torch.__version__
    assert set(record["affinity"]) <= set(range(os.cpu_count() or 1))
