"""Background training jobs: detached processes, outcomes, stop/resume, an ordered queue, concurrent use."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from emotion import jobs, progress
from emotion.cli import build_parser
from emotion.config import TrainConfig
from emotion.jobs import JobError, JobQueue

DATA = "synthetic:n=24,test=6,size=48"


def _config(runs: Path, name: str, **kw) -> TrainConfig:
    base = dict(model="vit_custom", from_scratch=True, data=DATA, image_size=48, batch_size=12, max_steps=2,
                output_dir=str(runs / name), early_stopping_patience=0, evaluate_test=False, warmup_ratio=0.0)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture
def queue(tmp_path: Path):
    q = JobQueue(tmp_path / "jobs")
    yield q
    for job in q.jobs():  # never leave a training process behind
        if job.state == jobs.RUNNING:
            q.stop(job.id, grace_s=5)
        elif job.state == jobs.QUEUED:
            q.stop(job.id)


def _until(predicate, timeout: float = 120.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def _parsed(argv: list[str]) -> TrainConfig:
    """The TrainConfig that ``python -m emotion train ARGV`` builds."""
    args = build_parser(only="train").parse_args(argv)
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in vars(args).items() if k in names})


def test_a_job_hands_its_whole_config_to_the_training_process(tmp_path: Path) -> None:
    q = JobQueue(tmp_path / "jobs")
    config = _config(tmp_path, "x", classes="happy,sad", learning_rate=3e-4, augment=False, bf16=False,
                     epochs=2.5, label_smoothing=0.0, seed=7)
    job = q.submit(config, start=False)
    assert job.command[1:5] == ["-m", "emotion", "train", "--config"]
    assert _parsed(job.command[3:]) == dataclasses.replace(config, output_dir=str(Path(config.output_dir).resolve()))
    every_default = TrainConfig(output_dir=str(tmp_path / "d"))
    assert _parsed(q.submit(every_default, start=False).command[3:]) == every_default
    # flags after --config override it; a field the config does not have is refused, naming it
    assert _parsed([*job.command[3:], "--seed", "9", "--augment", "true"]).seed == 9
    (tmp_path / "odd.json").write_text(json.dumps({"model": "vit_custom", "epoch": 3}))
    with pytest.raises(SystemExit):
        _parsed(["--config", str(tmp_path / "odd.json")])
    q.stop(job.id)
    q.forget(job.id)
    assert not (q.root / jobs.CONFIGS_DIR / f"{job.id}.json").exists()


def test_a_job_runs_detached_to_completion(queue: JobQueue) -> None:
    runs = queue.root.parent / "runs"
    job = queue.submit(_config(runs, "ok"))
    assert job.state == jobs.RUNNING and job.pid
    job = queue.wait(job.id, timeout=180)
    assert job.state == jobs.COMPLETED, (job.error, job.log_tail())
    assert job.returncode == 0
    assert (job.run_dir / "metrics.json").exists() and (job.run_dir / "model.safetensors").exists()
    assert "training process exited with code 0" in job.log_tail()
    summary = job.progress()
    assert summary["step"] == summary["max_steps"] == 2 and summary["fraction"] == 1.0
    curves = progress.training_curves(job.progress_records())
    assert len(curves["train"]) == 2 and curves["eval"] and "accuracy" in curves["eval"][0]
    with pytest.raises(JobError, match="already holds a completed run"):
        queue.submit(_config(runs, "ok"))


def test_a_failing_job_is_reported_failed_with_its_error(queue: JobQueue, tmp_path: Path) -> None:
    job = queue.submit(_config(tmp_path / "runs", "bad", data=str(tmp_path / "no-such-data")))
    job = queue.wait(job.id, timeout=120)
    assert job.state == jobs.FAILED
    assert "does not exist" in job.error and "no-such-data" in job.error
    assert "no-such-data" in job.log_tail()


def test_a_job_whose_process_vanished_is_failed_with_its_log(queue: JobQueue, tmp_path: Path) -> None:
    job = queue.submit(_config(tmp_path / "runs", "ghost"), start=False)
    job.run_dir.mkdir(parents=True)
    (job.run_dir / "train.log").write_text("step 1\nRuntimeError: out of memory\n")
    dead = subprocess.Popen([sys.executable, "-c", "pass"], start_new_session=True)
    dead.wait()
    doc = json.loads((queue.root / "queue.json").read_text())
    doc["jobs"][0].update(state="running", pid=dead.pid, pgid=dead.pid)
    (queue.root / "queue.json").write_text(json.dumps(doc))
    queue.refresh()
    job = queue.get(job.id)
    assert job.state == jobs.FAILED and "RuntimeError: out of memory" in job.error
    assert "killed, or the machine restarted" in job.error


def test_stop_then_resume_from_the_checkpoint(queue: JobQueue, tmp_path: Path) -> None:
    # about 6 steps per epoch and a checkpoint per epoch; far more epochs than the test waits for
    job = queue.submit(_config(tmp_path / "runs", "long", max_steps=-1, epochs=200))
    checkpoint = job.run_dir / "checkpoints" / "checkpoint-6"
    _until(lambda: (checkpoint / "trainer_state.json").exists(), what="the first checkpoint")
    pgid = queue.get(job.id).pid
    job = queue.stop(job.id)
    assert job.state == jobs.STOPPED and not jobs.group_alive(pgid)
    assert json.loads((job.run_dir / "status.json").read_text())["state"] == "stopped"
    assert checkpoint.is_dir()  # kept, so the run can continue
    with pytest.raises(JobError, match="only stopped, failed, cancelled"):
        queue.resume(queue.submit(_config(tmp_path / "runs", "other"), start=False).id)
    queue.stop(queue.jobs()[-1].id)  # cancel the queued one

    job = queue.resume(job.id)
    assert job.state == jobs.RUNNING and job.attempts == 2

    def steps_after_resume() -> list[int]:
        records = progress.read_progress(job.run_dir)
        starts = [i for i, r in enumerate(records) if r["event"] == "start"]
        return [r["step"] for r in records[starts[-1]:] if r["event"] == "train"] if len(starts) > 1 else []

    _until(steps_after_resume, what="the resumed run to train a step")
    assert "resuming from" in job.log_path.read_text()
    assert steps_after_resume()[0] > 6  # continued after the checkpoint, not from step 1
    job = queue.stop(job.id)
    assert job.state == jobs.STOPPED


def test_queued_jobs_run_one_at_a_time_in_order(queue: JobQueue, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    first = queue.submit(_config(runs, "first"))
    second = queue.submit(_config(runs, "second"))
    assert (first.state, second.state) == (jobs.RUNNING, jobs.QUEUED)
    assert queue.max_running == 1
    # no refresh() from here on: the first job's supervisor starts the second by itself
    _until(lambda: all(j.state in jobs.FINISHED for j in queue.jobs()), timeout=240, what="both jobs")
    a, b = queue.jobs()
    assert (a.name, b.name) == ("first", "second")
    assert a.state == b.state == jobs.COMPLETED, (a.error, b.error)
    assert b.started >= a.ended


def test_concurrent_submissions_keep_every_job(queue: JobQueue, tmp_path: Path) -> None:
    configs = [_config(tmp_path / "runs", f"r{i}") for i in range(8)]
    errors: list[BaseException] = []

    def submit(config: TrainConfig) -> None:
        try:
            JobQueue(queue.root).submit(config, start=False)  # separate objects, as two browser tabs have
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=submit, args=(c,)) for c in configs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    listed = queue.jobs()
    assert sorted(j.name for j in listed) == sorted(f"r{i}" for i in range(8))
    assert len({j.id for j in listed}) == 8
    with pytest.raises(JobError, match="already training into"):
        queue.submit(configs[0], start=False)
    for j in listed:
        queue.stop(j.id)  # cancel
    assert {j.state for j in queue.jobs()} == {jobs.CANCELLED}
    queue.forget(listed[0].id)
    assert len(queue.jobs()) == 7


def test_log_tail_collapses_progress_bars(tmp_path: Path) -> None:
    log = tmp_path / "train.log"
    log.write_text("start\n 10%|#   | 1/10\r 50%|#####  | 5/10\r100%|##########| 10/10\nerror: boom\n")
    assert progress.tail(log).splitlines() == ["start", "100%|##########| 10/10", "error: boom"]
    assert progress.tail(tmp_path / "missing.log") == ""


def test_progress_summary_counts_down_the_eta() -> None:
    records = [{"event": "train", "step": 5, "max_steps": 20, "epoch": 1.0, "elapsed_s": 10.0, "eta_s": 30.0,
                "time": "2030-01-01T00:00:00+00:00", "loss": 1.0}]
    from datetime import datetime

    later = datetime.fromisoformat("2030-01-01T00:00:10+00:00").timestamp()
    summary = progress.progress_summary(records, now=later)
    assert summary["fraction"] == 0.25 and summary["eta_s"] == pytest.approx(20.0)
    assert progress.progress_summary([])["fraction"] == 0.0
