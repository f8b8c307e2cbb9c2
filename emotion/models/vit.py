"""A Vision Transformer written from scratch, sized to train on a CPU.

Patch embedding (a strided convolution, or a small convolutional stem with the
same patch grid), a class token, learned position
embeddings, pre-norm encoder blocks (multi-head self-attention + MLP, with
stochastic depth) and a linear head.  Attention probabilities pass through
``attn.attn_drop`` like timm's, so attention rollout can hook them; when no
hook asks for them, the fused ``scaled_dot_product_attention`` kernel is used.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class ViTConfig:
    """Shape of the from-scratch ViT; defaults suit 48x48 faces on a CPU."""

    image_size: int = field(default=48, metadata={"help": "input side in pixels"})
    patch_size: int = field(default=6, metadata={"help": "patch side; image_size must be a multiple "
                                                               "(6 on 48px faces gives an 8x8 token grid)"})
    dim: int = field(default=192, metadata={"help": "token width"})
    depth: int = field(default=6, metadata={"help": "number of encoder blocks"})
    heads: int = field(default=3, metadata={"help": "attention heads; must divide dim"})
    mlp_ratio: float = field(default=2.0, metadata={"help": "MLP hidden width / dim"})
    dropout: float = field(default=0.0, metadata={"help": "dropout after attention/MLP"})
    drop_path: float = field(default=0.1, metadata={"help": "max stochastic-depth rate (last block)"})
    stem: str = field(default="conv", metadata={
        "help": "patch embedding: 'patch' (one strided conv, as in the ViT paper) or 'conv' (a few "
                "small strided convs with the same patch grid; trains far faster on small datasets)"})

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size "
                             f"{self.patch_size}; pick e.g. patch_size={self._suggest()}")
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} is not divisible by heads {self.heads}")
        if self.depth < 1 or self.dim < 8:
            raise ValueError(f"depth must be >= 1 and dim >= 8, got depth={self.depth} dim={self.dim}")
        if self.stem not in ("patch", "conv"):
            raise ValueError(f"stem must be 'patch' or 'conv', got {self.stem!r}")
        if self.stem == "conv" and not _stride_plan(self.patch_size):
            raise ValueError(f"stem='conv' needs a patch_size made of factors 2 and 3, got {self.patch_size}")
        if not 0 <= self.drop_path < 1 or not 0 <= self.dropout < 1:
            raise ValueError("dropout and drop_path must be in [0, 1)")

    def _suggest(self) -> int:
        return next((p for p in (4, 6, 8, 16, 2) if self.image_size % p == 0), 1)

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    def to_dict(self) -> dict:
        return asdict(self)


def _stride_plan(patch: int) -> list[int]:
    """Factor ``patch`` into strides of 2 and 3 (6 -> [2, 3]); empty if impossible."""
    strides = []
    for f in (2, 3):
        while patch % f == 0 and patch > 1:
            strides.append(f)
            patch //= f
    return strides if patch == 1 else []


def conv_stem(patch: int, dim: int) -> nn.Sequential:
    """Patch embedding as small strided convolutions (Xiao et al., 2021, "Early convolutions
    help transformers see better"): same token grid as a ``patch``-strided conv, but an easier
    optimisation problem, which matters when a ViT learns from ~10k faces."""
    strides = _stride_plan(patch)
    widths = [max(16, dim // 2 ** (len(strides) - i)) for i in range(len(strides))]
    layers: list[nn.Module] = []
    c_in = 3
    for stride, width in zip(strides, widths):
        layers += [nn.Conv2d(c_in, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        c_in = width
    layers.append(nn.Conv2d(c_in, dim, 1))
    return nn.Sequential(*layers)


class DropPath(nn.Module):
    """Stochastic depth: randomly skip a residual branch per sample while training."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = torch.empty((x.shape[0],) + (1,) * (x.ndim - 1), device=x.device, dtype=x.dtype)
        return x * keep.bernoulli_(1 - self.p) / (1 - self.p)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.attn_drop = nn.Dropout(dropout)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        if self.attn_drop._forward_hooks or self.attn_drop._forward_pre_hooks:
            # explicit path so hooks (attention rollout) see the probabilities
            attn = (q @ k.transpose(-2, -1)) * self.scale
            attn = self.attn_drop(attn.softmax(dim=-1))
            out = attn @ v
        else:
            out = F.scaled_dot_product_attention(
                q, k, v, dropout_p=self.attn_drop.p if self.training else 0.0)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(b, n, c)))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, dropout: float, drop_path: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, dim), nn.Dropout(dropout))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class VisionTransformer(nn.Module):
    """ViT classifier; ``num_prefix_tokens`` and ``grid`` describe its tokens for explainers."""

    num_prefix_tokens = 1

    def __init__(self, config: ViTConfig, num_classes: int) -> None:
        super().__init__()
        self.config = config
        self.patch_embed = (conv_stem(config.patch_size, config.dim) if config.stem == "conv"
                            else nn.Conv2d(3, config.dim, config.patch_size, stride=config.patch_size))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, config.grid ** 2 + 1, config.dim))
        rates = torch.linspace(0, config.drop_path, config.depth).tolist()
        self.blocks = nn.ModuleList(
            Block(config.dim, config.heads, config.mlp_ratio, config.dropout, r) for r in rates)
        self.norm = nn.LayerNorm(config.dim)
        self.head = nn.Linear(config.dim, num_classes)
        self._init_weights()

    @property
    def grid(self) -> tuple[int, int]:
        return (self.config.grid, self.config.grid)

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.config.image_size or x.shape[-2] != self.config.image_size:
            raise ValueError(f"vit_custom was built for {self.config.image_size}px input, got "
                             f"{tuple(x.shape[-2:])}; rebuild it with input_size={x.shape[-1]}")
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x)[:, 0])
