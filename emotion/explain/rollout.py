"""Attention rollout for Vision Transformers (Abnar & Zuidema, 2020)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from emotion.explain.base import Explainer, ExplainError, recording
from emotion.models.vit import VisionTransformer
from emotion.models.zoo import HFViTClassifier

HEAD_FUSIONS: tuple[str, ...] = ("mean", "max", "min")


class RolloutExplainer(Explainer):
    """Attention rollout: multiply (attention + identity) over the blocks; read the class token's row.

    Heads are fused with ``head_fusion`` (mean, max or min); in each block the
    weakest ``discard_ratio`` of attention weights are zeroed (not the class
    token's own), which sharpens the map.  Class-agnostic by construction.
    """

    name = "rollout"
    order = 50
    class_specific = False
    families = ("vit",)
    option_names = ("head_fusion", "discard_ratio")

    def compute(self, x: torch.Tensor, target: int) -> tuple[np.ndarray, dict[str, Any]]:
        fusion = self.options.get("head_fusion", "mean")
        discard = float(self.options.get("discard_ratio", 0.9))
        if fusion not in HEAD_FUSIONS:
            raise ExplainError(f"head_fusion={fusion!r} is not one of {list(HEAD_FUSIONS)}")
        if not 0.0 <= discard < 1.0:
            raise ExplainError(f"discard_ratio={discard!r} must be in [0, 1)")
        attentions = attention_maps(self.module, x)
        prefix = int(self.module.num_prefix_tokens)
        h, w = (int(v) for v in self.module.grid)
        mask = attention_rollout(attentions, fusion, discard, prefix)
        if mask.numel() != h * w:
            raise ExplainError(f"rollout gave {mask.numel()} patch weights for a {h}x{w} grid")
        return mask.reshape(h, w).numpy(), {}


def attention_maps(module: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Attention probabilities ``(B, heads, N, N)`` of every block, in order, for input ``x``."""
    probs: dict[int, torch.Tensor] = {}
    if isinstance(module, VisionTransformer):
        layers = [b.attn.attn_drop for b in module.blocks]  # hooking it switches on the explicit path

        def save(i: int, m: nn.Module, inputs: Any, output: Any) -> None:
            probs[i] = output.detach()
    elif isinstance(module, HFViTClassifier):
        layers = [layer.attention for layer in module.blocks]

        def save(i: int, m: nn.Module, inputs: Any, output: Any) -> None:
            weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
            probs[i] = (weights if weights is not None else _hf_attention_probs(m, inputs[0])).detach()
    else:
        raise ExplainError(f"attention rollout needs vit_custom or hf_vit, not {type(module).__name__}")
    with recording(layers, save), torch.no_grad():
        module(x)
    if len(probs) != len(layers):
        raise ExplainError(f"recorded attention of {len(probs)} of {len(layers)} blocks")
    return [probs[i] for i in range(len(layers))]


def _hf_attention_probs(attn: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """softmax(QK^T / sqrt(d)) of a Hugging Face ViT attention module (its fused kernels return none)."""
    if hasattr(attn, "q_proj"):  # transformers >= 5
        q_proj, k_proj, head_dim, scale = attn.q_proj, attn.k_proj, attn.head_dim, attn.scaling
    else:  # transformers 4.x: ViTAttention.attention is ViTSelfAttention
        sa = attn.attention
        q_proj, k_proj, head_dim = sa.query, sa.key, sa.attention_head_size
        scale = head_dim ** -0.5
    b, n, _ = hidden.shape
    q = q_proj(hidden).view(b, n, -1, head_dim).transpose(1, 2)
    k = k_proj(hidden).view(b, n, -1, head_dim).transpose(1, 2)
    return (q @ k.transpose(-1, -2) * scale).float().softmax(-1)


def attention_rollout(attentions: Sequence[torch.Tensor], head_fusion: str = "mean",
                      discard_ratio: float = 0.9, prefix_tokens: int = 1) -> torch.Tensor:
    """Patch weights (flat, first image of the batch) from per-block attention probabilities."""
    n = attentions[0].shape[-1]
    result = torch.eye(n)
    for attn in attentions:
        a = attn[0].float().cpu()  # (heads, N, N)
        fused = {"mean": a.mean(0), "max": a.max(0).values, "min": a.min(0).values}[head_fusion]
        flat = fused.flatten().clone()
        drop = int(flat.numel() * discard_ratio)
        if drop:
            idx = flat.topk(drop, largest=False).indices
            flat[idx[idx != 0]] = 0.0  # never drop the class token's attention to itself
        fused = flat.view(n, n)
        a = (fused + torch.eye(n)) / 2.0
        a = a / a.sum(-1, keepdim=True)
        result = a @ result
    return result[0, prefix_tokens:]
