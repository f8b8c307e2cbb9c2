"""What a model costs: device choice, batch-1 latency, throughput, parameters and bytes on disk."""

from __future__ import annotations

import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence, Union

import torch

from emotion import runs
from emotion.models.registry import count_parameters


def device_of(module: torch.nn.Module, device: Union[None, str, torch.device]) -> torch.device:
    """``device`` if given, else where the module's weights are (the CPU for a module without any)."""
    if device is not None:
        return torch.device(device)
    try:
        return next(module.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def auto_device(name: Optional[str] = None) -> torch.device:
    """``name`` if given, else the GPU when there is one, else the CPU."""
    if name and name != "auto":
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def measure_latency(module: torch.nn.Module, input_size: int, repeats: int = 20, warmup: int = 3,
                    device: Union[None, str, torch.device] = None) -> dict[str, Any]:
    """Batch-1 inference time: median (and p90) milliseconds per image over ``repeats`` after warm-up.

    The median resists the outliers a busy machine produces; the thread count
    and device are recorded because they change the answer.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got {repeats} / {warmup}")
    dev = device_of(module, device)
    module = module.to(dev).eval()
    x = torch.rand(1, 3, input_size, input_size, device=dev)
    for _ in range(warmup):
        module(x)
    _sync(dev)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        module(x)
        _sync(dev)
        times.append((time.perf_counter() - start) * 1000)
    times.sort()
    p90 = times[min(len(times) - 1, int(0.9 * len(times)))]
    return {"latency_ms": statistics.median(times), "latency_p90_ms": p90,
            "repeats": repeats, "warmup": warmup, "device": str(dev), "threads": torch.get_num_threads()}


@torch.inference_mode()
def measure_throughput(module: torch.nn.Module, input_size: int, batch_size: int = 32, repeats: int = 5,
                       warmup: int = 1, device: Union[None, str, torch.device] = None) -> dict[str, Any]:
    """Images per second at ``batch_size`` (total images / total time over ``repeats`` batches)."""
    if batch_size < 1 or repeats < 1:
        raise ValueError(f"batch_size and repeats must be >= 1, got {batch_size} / {repeats}")
    dev = device_of(module, device)
    module = module.to(dev).eval()
    x = torch.rand(batch_size, 3, input_size, input_size, device=dev)
    for _ in range(warmup):
        module(x)
    _sync(dev)
    start = time.perf_counter()
    for _ in range(repeats):
        module(x)
    _sync(dev)
    elapsed = time.perf_counter() - start
    return {"throughput_ips": batch_size * repeats / elapsed, "batch_size": batch_size, "repeats": repeats,
            "device": str(dev), "threads": torch.get_num_threads()}


def run_size_bytes(run_dir: Union[str, Path]) -> int:
    """Bytes of weights on disk: the run's weights file, or the sum over an ensemble's members."""
    run_dir = Path(run_dir)
    spec = runs.read_json(run_dir / runs.CONFIG_FILE)
    if spec.get("model") == "ensemble":
        return sum(run_size_bytes(m) for m in runs.member_dirs(run_dir, spec))
    weights = run_dir / runs.WEIGHTS_FILE
    if not weights.exists():
        raise runs.RunError(f"{weights} is missing: the run did not finish or was moved")
    return weights.stat().st_size


def model_stats(run: runs.LoadedRun) -> dict[str, Any]:
    size = run_size_bytes(run.path)
    return {"parameters": count_parameters(run.module), "size_bytes": size, "size_mb": size / 2**20}


def cpu_name() -> str:
    """The CPU model (from /proc/cpuinfo on Linux), so speed numbers say what machine made them."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_description() -> str:
    """The accelerator or CPU that produced a number, in words (recorded beside shipped results)."""
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (CUDA)"
    return f"{cpu_name()}, {os.cpu_count()} CPUs"


def speed_settings(detectors: str, backends: str, threads: str) -> Iterator[tuple[str, str, int]]:
    """Every ``(detector, backend, threads)`` of a speed sweep given as comma-separated lists.

    Torch is set to each thread count before its setting is yielded, so a benchmark times
    exactly the combination it reports.
    """
    thread_counts = [int(t) for t in threads.split(",") if t.strip()]
    for detector in (d.strip() for d in detectors.split(",") if d.strip()):
        for backend in (b.strip() for b in backends.split(",") if b.strip()):
            for count in thread_counts:
                torch.set_num_threads(count)
                yield detector, backend, count


def machine_record(load_before: Sequence[float]) -> dict[str, Any]:
    """Where a speed number was measured: CPU, CPUs usable, torch and the load average around it.

    ``load_before`` is :func:`os.getloadavg` taken before the timing; the load after is read
    here, so a number measured beside other work shows it.
    """
    return {"cpu": cpu_name(), "cpus": os.cpu_count(), "affinity": sorted(os.sched_getaffinity(0)),
            "torch": torch.__version__, "load_average_before": [round(v, 2) for v in load_before],
            "load_average_after": [round(v, 2) for v in os.getloadavg()]}
