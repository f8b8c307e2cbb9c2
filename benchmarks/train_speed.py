"""Training throughput (images/second) per model and input size on this machine.

Measures full training steps (forward, class-weighted loss, backward, AdamW) on
random tensors with the same settings the trainer uses (bf16 autocast where the
CPU supports it, channels-last inputs for CNNs), after warm-up steps.

    python benchmarks/train_speed.py --models efficientnet_lite0:64,vit_custom:48 --precision fp32,bf16
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from emotion.profiling import cpu_name  # noqa: E402
from emotion.models import create_model, get_model_config  # noqa: E402
from emotion.training import cpu_supports_bf16  # noqa: E402


def measure(name: str, size: int, batch: int, steps: int, warmup: int, bf16: bool) -> dict:
    built = create_model(name, 3, pretrained=False, input_size=size)
    model = built.module.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, 3, size, size)
    if built.config.family == "cnn":
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 3, (batch,))
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    step = statistics.median(times)
    return {"model": name, "input_size": size, "batch_size": batch, "bf16": bf16,
            "median_step_s": round(step, 3), "images_per_second": round(batch / step, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="efficientnet_lite0:64,vit_custom:48,resnet34:64,efficientnet_b4:64,vgg16:64",
                   help="comma-separated name:size pairs")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--precision", default="auto",
                   help="comma-separated fp32/bf16 to compare, or 'auto' (what training uses per model)")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    rows = []
    for item in args.models.split(","):
        name, size = item.split(":")
        if args.precision == "auto":
            modes = [cpu_supports_bf16() and get_model_config(name).family == "vit"]
        else:
            modes = [m.strip() == "bf16" for m in args.precision.split(",")]
        for bf16 in modes:
            if bf16 and not cpu_supports_bf16():
                logging.warning("this CPU has no native bf16; skipping bf16 for %s", name)
                continue
            rows.append(measure(name, int(size), args.batch_size, args.steps, args.warmup, bf16))
            print(json.dumps(rows[-1]), flush=True)
    meta = {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": cpu_name(),
            "machine": platform.machine(), "results": rows}
    if args.json:
        args.json.write_text(json.dumps(meta, indent=2))


if __name__ == "__main__":
    main()
