"""Background training jobs that outlive the Streamlit script run (and the browser tab) that started them.

Design
------
* **One job, one training process.**  A job runs ``python -m emotion train --config FILE``,
  where ``FILE`` (``<jobs dir>/configs/<job id>.json``) holds the job's
  :class:`~emotion.config.TrainConfig` as JSON, so no option is restated or
  re-spelled here.  Its stdout and stderr go to ``<run folder>/train.log``.
* **The queue is one JSON file** (``<jobs dir>/queue.json``, by default
  ``checkpoints/jobs/``) listing every job: id, command, run folder, state, pids,
  times.  Every read-modify-write holds an exclusive ``flock`` on
  ``queue.lock`` and replaces the file atomically, so two browser tabs, two
  threads or two processes never lose or corrupt an update.
* **Detached supervisors, no daemon.**  A job starts as
  ``python -m emotion.jobs supervise <jobs dir> <id>`` in a new session
  (``start_new_session=True``): it survives page reloads, reruns and a closed
  browser.  The supervisor runs the training command as its child (same process
  group), waits, records the outcome from the run's ``status.json`` and then
  starts the next queued job(s) itself.  So the queue moves on with no page open,
  and nothing keeps running once the queue is empty.
* **Readers reconcile.**  :meth:`JobQueue.refresh` (the Train page calls it on
  every poll; :meth:`~JobQueue.submit`, :meth:`~JobQueue.stop` and the
  supervisors do too) marks a "running" job whose process group is gone without a
  recorded outcome (supervisor killed, machine restarted) as failed, with the
  tail of its log, and starts queued jobs, oldest first, while fewer than
  ``max_running`` (stored in the queue file, default 1) are running.  Starting
  happens under the lock, so racing callers never start a job twice.
* **Liveness** is "some non-zombie process is in the job's process group"
  (``/proc`` on Linux, ``killpg(pgid, 0)`` elsewhere); children this process
  started are reaped by a waiter thread.
* **States:** ``queued -> running -> completed | failed | stopped``; a queued job
  can be ``cancelled``.  :meth:`~JobQueue.stop` sends SIGTERM to the process group
  (SIGKILL after a grace period) and writes ``stopped`` into the run's
  ``status.json``.  :meth:`~JobQueue.resume` queues a stopped, failed or cancelled
  job again with the same config: training continues from the last checkpoint
  in the run folder (saved every epoch, or every ``max_steps / 2`` steps; the
  checkpoints are deleted only after a run completes).

This module imports neither torch nor Streamlit at import time, so a supervisor
starts in a fraction of a second.  Stopping process groups is POSIX-only.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence, Union

from emotion import paths
from emotion.fileio import read_json_or_none, utc_now, write_json
from emotion.processes import proc_stat, reap
from emotion.progress import LOG_TAIL_LINES, progress_summary, read_progress, tail
from emotion.run_files import STATUS_FILE, TRAIN_LOG_FILE, training_target_problem

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows: atomic writes only
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

QUEUE_FILE = "queue.json"
LOCK_FILE = "queue.lock"
CONFIGS_DIR = "configs"  # <jobs dir>/configs/<job id>.json: the TrainConfig each job's process reads
LOG_FILE = TRAIN_LOG_FILE

QUEUED, RUNNING, COMPLETED, FAILED, STOPPED, CANCELLED = (
    "queued", "running", "completed", "failed", "stopped", "cancelled")
ACTIVE = (QUEUED, RUNNING)
FINISHED = (COMPLETED, FAILED, STOPPED, CANCELLED)
RESUMABLE = (STOPPED, FAILED, CANCELLED)
# environment a job keeps from the process that queued it (the supervisor that starts it may be another's)
KEPT_ENV_PREFIXES = ("EMOTION_", "WANDB_", "HF_", "TRANSFORMERS_", "OMP_", "MKL_", "CUDA_", "MLFLOW_",
                     "TORCH_", "PYTORCH_")


class JobError(ValueError):
    """A job operation cannot be done as asked; the message says why."""


# ----------------------------------------------------------------------------- commands

def train_command(config_file: Union[str, Path], python: Optional[str] = None) -> list[str]:
    """``python -m emotion train --config FILE``: the training process reads its whole config from ``FILE``."""
    return [python or sys.executable, "-m", "emotion", "train", "--config", str(config_file)]


# ----------------------------------------------------------------------------- processes

def group_alive(pgid: Optional[int]) -> bool:
    """Whether any live (non-zombie) process is in process group ``pgid``."""
    if not pgid:
        return False
    reap(pgid)
    if Path("/proc/self/stat").exists():
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                stat = proc_stat(int(entry.name))
                if stat is not None and stat[1] == pgid and stat[0] not in ("Z", "X"):
                    return True
        return False
    try:  # pragma: no cover - macOS and other POSIX without /proc
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if hasattr(os, "killpg"):
            os.killpg(pgid, sig)
        else:  # pragma: no cover - Windows
            os.kill(pgid, sig)


def _project_root() -> Path:
    return Path(__file__).resolve().parents[1]


def _job_env(record: dict) -> dict[str, str]:
    env = dict(os.environ)
    env.update(record.get("env") or {})
    root = str(_project_root())
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("TQDM_MININTERVAL", "5")  # progress bars: a line every 5 s in train.log, not every step
    return env


def _last_error_line(text: str) -> Optional[str]:
    for line in reversed(text.splitlines()):
        if line.startswith("error:") or "Error:" in line or "Exception:" in line:
            return line.strip()
    return None


# ----------------------------------------------------------------------------- jobs

@dataclasses.dataclass
class Job:
    """One queued/running/finished training job, as shown to the user."""

    id: str
    name: str
    run_dir: Path
    state: str
    command: list[str]
    config: dict
    created: str
    started: Optional[str] = None
    ended: Optional[str] = None
    error: Optional[str] = None
    attempts: int = 1
    pid: Optional[int] = None
    returncode: Optional[int] = None

    @property
    def log_path(self) -> Path:
        return self.run_dir / LOG_FILE

    @property
    def active(self) -> bool:
        return self.state in ACTIVE

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return tail(self.log_path, lines)

    def progress_records(self) -> list[dict]:
        return read_progress(self.run_dir)

    def progress(self) -> dict[str, Any]:
        return progress_summary(self.progress_records())

    def run_status(self) -> Optional[dict]:
        """The run's own ``status.json`` (written by training), or None."""
        return read_json_or_none(self.run_dir / STATUS_FILE)

    @classmethod
    def from_record(cls, r: dict) -> "Job":
        return cls(id=r["id"], name=r["name"], run_dir=Path(r["run_dir"]), state=r["state"],
                   command=list(r["command"]), config=dict(r.get("config") or {}), created=r["created"],
                   started=r.get("started"), ended=r.get("ended"), error=r.get("error"),
                   attempts=int(r.get("attempts", 1)), pid=r.get("pid"), returncode=r.get("returncode"))


class JobQueue:
    """The job queue in ``jobs_dir`` (default :func:`emotion.paths.jobs_dir`); see the module docstring."""

    def __init__(self, jobs_dir: Union[None, str, Path] = None, max_running: Optional[int] = None) -> None:
        self.root = Path(jobs_dir) if jobs_dir is not None else paths.jobs_dir()
        self.root = self.root.expanduser().resolve()
        self._local = threading.local()
        if max_running is not None:
            self.set_max_running(max_running)

    # -- storage ------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict]:
        """Exclusive access to the queue document; changes are saved on exit (re-entrant per thread)."""
        depth = getattr(self._local, "depth", 0)
        if depth:
            self._local.depth += 1
            try:
                yield self._local.doc
            finally:
                self._local.depth -= 1
            return
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / LOCK_FILE, "a+") as lock:
            if fcntl is not None:
                fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                doc = self._load()
                before = json.dumps(doc, sort_keys=True, default=str)
                self._local.doc, self._local.depth = doc, 1
                try:
                    yield doc
                finally:
                    self._local.depth = 0
                    self._local.doc = None
                if json.dumps(doc, sort_keys=True, default=str) != before:
                    write_json(self.root / QUEUE_FILE, doc)
            finally:
                if fcntl is not None:
                    fcntl.flock(lock, fcntl.LOCK_UN)

    def _load(self) -> dict:
        doc = read_json_or_none(self.root / QUEUE_FILE)
        if not isinstance(doc, dict) or not isinstance(doc.get("jobs"), list):
            if (self.root / QUEUE_FILE).exists():
                broken = self.root / f"queue.broken-{int(time.time())}.json"
                os.replace(self.root / QUEUE_FILE, broken)
                logger.warning("the job queue was unreadable; kept it as %s and started a new one", broken)
            doc = {"version": 1, "max_running": 1, "next_seq": 1, "jobs": []}
        return doc

    def _find(self, doc: dict, job_id: str) -> dict:
        for r in doc["jobs"]:
            if r["id"] == job_id:
                return r
        raise JobError(f"no job {job_id!r} in {self.root / QUEUE_FILE}")

    # -- reading ------------------------------------------------------------------------------------------

    @property
    def max_running(self) -> int:
        doc = read_json_or_none(self.root / QUEUE_FILE)
        return int(doc.get("max_running", 1)) if isinstance(doc, dict) else 1

    def set_max_running(self, n: int) -> None:
        if int(n) < 1:
            raise JobError(f"max_running must be at least 1, got {n}")
        with self._locked() as doc:
            doc["max_running"] = int(n)
        self.refresh()

    def jobs(self) -> list[Job]:
        """Every job, in queue order (oldest first); call :meth:`refresh` first for up-to-date states."""
        doc = read_json_or_none(self.root / QUEUE_FILE)
        records = doc.get("jobs", []) if isinstance(doc, dict) else []
        return [Job.from_record(r) for r in sorted(records, key=lambda r: r.get("seq", 0))]

    def get(self, job_id: str) -> Job:
        for job in self.jobs():
            if job.id == job_id:
                return job
        raise JobError(f"no job {job_id!r} in {self.root / QUEUE_FILE}")

    # -- changing -----------------------------------------------------------------------------------------

    def submit(self, config: Any, start: bool = True) -> Job:
        """Queue a training run of ``config`` (a ``TrainConfig``); it starts when a slot is free."""
        run_dir = Path(config.output_dir).expanduser().resolve()
        fields = {**config.to_dict(), "output_dir": str(run_dir)}
        # the checks `emotion train` makes, before queueing: an ensemble or a copied model is no target
        problem = training_target_problem(run_dir, overwrite=bool(getattr(config, "overwrite", False)))
        if problem:
            raise JobError(problem)
        env = {k: v for k, v in os.environ.items() if k.startswith(KEPT_ENV_PREFIXES)}
        with self._locked() as doc:
            clash = [r["id"] for r in doc["jobs"] if r["state"] in ACTIVE and Path(r["run_dir"]) == run_dir]
            if clash:
                raise JobError(f"job {clash[0]} is already training into {run_dir}")
            job_id = f"{datetime.now():%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"
            record = {"id": job_id, "seq": doc["next_seq"], "name": run_dir.name, "run_dir": str(run_dir),
                      "cwd": os.getcwd(), "command": train_command(self._write_config(job_id, fields)),
                      "config": fields, "env": env, "state": QUEUED, "created": utc_now(), "queued": utc_now(),
                      "attempts": 1}
            doc["next_seq"] += 1
            doc["jobs"].append(record)
        if start:
            self.refresh()
        return self.get(job_id)

    def _write_config(self, job_id: str, fields: dict) -> Path:
        """Store the job's TrainConfig fields where its training process will read them."""
        path = self.root / CONFIGS_DIR / f"{job_id}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, fields)
        return path

    def refresh(self) -> list[Job]:
        """Reconcile running jobs with their processes, start queued ones; returns every job."""
        with self._locked() as doc:
            for r in doc["jobs"]:
                if r["state"] == RUNNING and not group_alive(r.get("pgid")):
                    self._finish(r, returncode=None)
            running = sum(r["state"] == RUNNING for r in doc["jobs"])
            limit = max(1, int(doc.get("max_running", 1)))
            for r in sorted(doc["jobs"], key=lambda r: r["seq"]):
                if running >= limit:
                    break
                if r["state"] == QUEUED:
                    self._launch(r)
                    running += r["state"] == RUNNING
        return self.jobs()

    def _launch(self, r: dict) -> None:
        """Start the supervisor of queued job ``r`` (lock held)."""
        run_dir = Path(r["run_dir"])
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            with open(run_dir / LOG_FILE, "ab") as log:
                log.write(f"=== {utc_now()} job {r['id']} attempt {r.get('attempts', 1)}: "
                          f"{subprocess.list2cmdline(r['command'])}\n".encode())
                proc = subprocess.Popen(
                    [sys.executable, "-m", "emotion.jobs", "supervise", str(self.root), r["id"]],
                    cwd=r.get("cwd") or None, env=_job_env(r), stdin=subprocess.DEVNULL, stdout=log,
                    stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)
        except OSError as exc:
            r.update(state=FAILED, error=f"could not start the job: {exc}", ended=utc_now())
            return
        threading.Thread(target=proc.wait, name=f"reap-{proc.pid}", daemon=True).start()
        r.update(state=RUNNING, pid=proc.pid, pgid=proc.pid, started=utc_now(), ended=None, error=None,
                 returncode=None, stop_requested=False)

    def _finish(self, r: dict, returncode: Optional[int]) -> None:
        """Record the outcome of job ``r`` whose processes have ended (lock held)."""
        run_dir = Path(r["run_dir"])
        status = read_json_or_none(run_dir / STATUS_FILE)
        state = status.get("state") if isinstance(status, dict) else None
        r.update(ended=utc_now(), returncode=returncode)
        if r.get("stop_requested"):
            r.update(state=STOPPED, error=None)
            if state in (None, "running", "interrupted"):
                _mark_run_stopped(run_dir)
        elif state == "completed":
            r.update(state=COMPLETED, error=None)
        else:
            log = tail(run_dir / LOG_FILE)
            if state == "failed" and isinstance(status, dict) and status.get("error"):
                error = str(status["error"])
            else:
                how = (f"exited with code {returncode}" if returncode is not None
                       else "ended (killed, or the machine restarted)")
                detail = _last_error_line(log)
                error = f"the training process {how} without finishing" + (f": {detail}" if detail else "")
            r.update(state=FAILED, error=error)

    def stop(self, job_id: str, grace_s: float = 15.0) -> Job:
        """Stop a running job (SIGTERM to its process group, SIGKILL after ``grace_s``); cancel a queued job.

        The run's checkpoints stay, so :meth:`resume` can continue it.
        """
        with self._locked() as doc:
            r = self._find(doc, job_id)
            if r["state"] == QUEUED:
                r.update(state=CANCELLED, ended=utc_now())
                return Job.from_record(r)
            if r["state"] != RUNNING:
                raise JobError(f"job {job_id} is {r['state']}, not running")
            r["stop_requested"] = True
            pgid = r.get("pgid")
        if pgid:
            _signal_group(pgid, signal.SIGTERM)
            deadline = time.monotonic() + grace_s
            while group_alive(pgid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if group_alive(pgid):
                _signal_group(pgid, getattr(signal, "SIGKILL", signal.SIGTERM))
                deadline = time.monotonic() + 5
                while group_alive(pgid) and time.monotonic() < deadline:
                    time.sleep(0.1)
        with self._locked() as doc:
            r = self._find(doc, job_id)
            if r["state"] == RUNNING:
                self._finish(r, returncode=None)
        self.refresh()
        return self.get(job_id)

    def resume(self, job_id: str) -> Job:
        """Queue a stopped, failed or cancelled job again; training continues from its last checkpoint."""
        with self._locked() as doc:
            r = self._find(doc, job_id)
            if r["state"] not in RESUMABLE:
                raise JobError(f"job {job_id} is {r['state']}; only {', '.join(RESUMABLE)} jobs can be "
                               "resumed")
            clash = [o["id"] for o in doc["jobs"]
                     if o is not r and o["state"] in ACTIVE and o["run_dir"] == r["run_dir"]]
            if clash:
                raise JobError(f"job {clash[0]} is already training into {r['run_dir']}")
            fields = {**r["config"], "resume": True}
            r.update(state=QUEUED, command=train_command(self._write_config(job_id, fields), python=r["command"][0]),
                     config=fields, seq=doc["next_seq"], queued=utc_now(), ended=None, error=None,
                     returncode=None, stop_requested=False, attempts=int(r.get("attempts", 1)) + 1)
            doc["next_seq"] += 1
        self.refresh()
        return self.get(job_id)

    def forget(self, job_id: str) -> None:
        """Remove a finished job from the list (its run folder stays)."""
        with self._locked() as doc:
            r = self._find(doc, job_id)
            if r["state"] in ACTIVE:
                raise JobError(f"job {job_id} is {r['state']}: stop it first")
            doc["jobs"].remove(r)
        (self.root / CONFIGS_DIR / f"{job_id}.json").unlink(missing_ok=True)

    def wait(self, job_id: str, timeout: float = 600.0, poll: float = 0.5) -> Job:
        """Block until the job has finished (refreshing the queue meanwhile); for scripts and tests."""
        deadline = time.monotonic() + timeout
        while True:
            self.refresh()
            job = self.get(job_id)
            if job.state in FINISHED:
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job.state} after {timeout:.0f} s")
            time.sleep(poll)

    # -- supervisor ---------------------------------------------------------------------------------------

    def supervise(self, job_id: str) -> int:
        """Run job ``job_id``'s training command, record its outcome, then start the next queued job."""
        with self._locked() as doc:
            r = self._find(doc, job_id)
            if r["state"] != RUNNING or r.get("pid") != os.getpid():
                logger.error("job %s is %s under pid %s, not this supervisor (%s)", job_id, r["state"],
                             r.get("pid"), os.getpid())
                return 1
            command, cwd = list(r["command"]), r.get("cwd") or None
        try:
            proc = subprocess.Popen(command, cwd=cwd, stdin=subprocess.DEVNULL)  # inherits train.log
        except OSError as exc:
            print(f"error: could not start {command[0]}: {exc}", file=sys.stderr, flush=True)
            returncode = 127
        else:
            with self._locked() as doc:
                self._find(doc, job_id)["trainer_pid"] = proc.pid
            returncode = proc.wait()
        print(f"=== {utc_now()} training process exited with code {returncode}", flush=True)
        with self._locked() as doc:
            r = self._find(doc, job_id)
            if r["state"] == RUNNING:
                self._finish(r, returncode)
        self.refresh()
        return 0


def _mark_run_stopped(run_dir: Path) -> None:
    """Overwrite a stale "running" status of a stopped run so every reader sees it stopped."""
    previous = read_json_or_none(run_dir / STATUS_FILE)
    record = {"state": "stopped", "time": utc_now(),
              "note": "stopped from the job queue; resume continues from the last checkpoint"}
    if isinstance(previous, dict) and previous.get("pid"):
        record["pid"] = previous["pid"]
    with contextlib.suppress(OSError):
        write_json(run_dir / STATUS_FILE, record)


# ----------------------------------------------------------------------------- command line

def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m emotion.jobs", description="background training jobs")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("supervise", help="(internal) run one job and start the next")
    p.add_argument("jobs_dir")
    p.add_argument("job_id")
    p = sub.add_parser("list", help="list the jobs")
    p.add_argument("--jobs-dir", default=None)
    for name in ("stop", "resume"):
        p = sub.add_parser(name, help=f"{name} a job")
        p.add_argument("job_id")
        p.add_argument("--jobs-dir", default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if args.command == "supervise":
        return JobQueue(args.jobs_dir).supervise(args.job_id)
    queue = JobQueue(args.jobs_dir)
    try:
        if args.command == "stop":
            queue.stop(args.job_id)
        elif args.command == "resume":
            queue.resume(args.job_id)
    except JobError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for job in queue.refresh():
        p = job.progress()
        done = f"{p['step']}/{p['max_steps']}" if p["max_steps"] else "-"
        error = f"  {job.error}" if job.error else ""
        print(f"{job.id}  {job.state:9s}  {done:>11s}  {job.run_dir}{error}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
