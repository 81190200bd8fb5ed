"""A plain ViT whose parameter names load DINO's released ViT-B/8 backbone (``dino_vitbase8_pretrain.pth``).

Architecture (DINO ``vit_base(patch_size=8)``): 8x8 patch embedding to 768-d, a learned [CLS] token
and learned position embeddings for a 28x28 grid (224 px), 12 pre-norm blocks (LayerNorm eps 1e-6,
12-head self-attention with a fused ``qkv`` projection with bias, 3072-d GELU MLP) and a final
LayerNorm. No classification head.

The forward pass returns what the paper's metrics need: the last block's tokens (before the final
LayerNorm; Splice reads its [CLS] token there), the final-normed [CLS] token and the last block's
attention keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from shmt_cli.checkpoint import CheckpointError
from shmt_cli.metrics.paper import check_state_dict, read_state_dict

DINO_VITB8_WHAT = "DINO ViT-B/8"


@dataclass(frozen=True)
class ViTConfig:
    """Hyper-parameters; the defaults are DINO's ViT-B/8."""

    patch_size: int = 8
    dim: int = 768
    depth: int = 12
    heads: int = 12
    mlp_dim: int = 3072
    #: The position-embedding grid is trained for this input size (28x28 patches for ViT-B/8).
    train_size: int = 224
    layer_norm_eps: float = 1e-6

    @property
    def grid(self) -> int:
        return self.train_size // self.patch_size


VIT_B8 = ViTConfig()


class ViTOutput(NamedTuple):
    """Outputs of one forward pass; B images, T = 1 + patches tokens, [CLS] first."""

    #: (B, T, dim) float32, output of the last block before the final LayerNorm.
    last_block_tokens: torch.Tensor
    #: (B, dim) float32, the [CLS] token after the final LayerNorm (DINO's image embedding).
    normed_cls: torch.Tensor
    #: (B, heads, T, dim / heads) float32, the last block's attention keys (the k part of qkv).
    last_keys: torch.Tensor

    @property
    def cls(self) -> torch.Tensor:
        """(B, dim) [CLS] token of the last block, the one Splice (and SHMT's CLS metric) compares."""
        return self.last_block_tokens[:, 0]


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, (H // p) * (W // p), dim), patches in row-major order."""
        return self.proj(images).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, dim) -> (attended (B, T, dim), keys (B, heads, T, dim / heads))."""
        batch, count, dim = tokens.shape
        # The fused projection is laid out as [q | k | v], each split into heads.
        qkv = self.qkv(tokens).reshape(batch, count, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        queries, keys, values = qkv.unbind(0)
        # Default scale 1 / sqrt(head_dim), as in DINO.
        attended = F.scaled_dot_product_attention(queries, keys, values)
        return self.proj(attended.transpose(1, 2).reshape(batch, count, dim)), keys


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(tokens)))


class Block(nn.Module):
    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(config.dim, eps=config.layer_norm_eps)
        self.attn = Attention(config.dim, config.heads)
        self.norm2 = nn.LayerNorm(config.dim, eps=config.layer_norm_eps)
        self.mlp = Mlp(config.dim, config.mlp_dim)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        attended, keys = self.attn(self.norm1(tokens))
        tokens = tokens + attended
        return tokens + self.mlp(self.norm2(tokens)), keys


class DinoViT(nn.Module):
    """DINO's ViT backbone; input (B, 3, H, W) float32 ImageNet-normalised, H and W multiples of the patch."""

    def __init__(self, config: ViTConfig = VIT_B8) -> None:
        super().__init__()
        self.config = config
        self.patch_embed = PatchEmbed(config.patch_size, config.dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + config.grid**2, config.dim))
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.depth))
        self.norm = nn.LayerNorm(config.dim, eps=config.layer_norm_eps)
        # Random but non-degenerate start for tests with unloaded weights; real use loads a checkpoint.
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.pos_embed, std=0.02)

    def position_embedding(self, height: int, width: int) -> torch.Tensor:
        """(1, 1 + (height // p) * (width // p), dim) position embeddings for an input of that size.

        The trained grid is resized bicubically for other sizes the way DINO does it (scale factors
        padded by 0.1 patch so the output size rounds right), so features match DINO's at any size.
        """
        rows, cols = height // self.config.patch_size, width // self.config.patch_size
        grid = self.config.grid
        if rows == grid and cols == grid:
            return self.pos_embed
        cls_pos, patch_pos = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        patch_pos = patch_pos.reshape(1, grid, grid, self.config.dim).permute(0, 3, 1, 2)
        patch_pos = F.interpolate(
            patch_pos,
            scale_factor=((rows + 0.1) / grid, (cols + 0.1) / grid),
            mode="bicubic",
            align_corners=False,
        )
        if patch_pos.shape[-2:] != (rows, cols):
            raise RuntimeError(
                f"position-embedding resize gave {tuple(patch_pos.shape[-2:])}, not {(rows, cols)}"
            )
        patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, rows * cols, self.config.dim)
        return torch.cat((cls_pos, patch_pos), dim=1)

    def forward(self, images: torch.Tensor) -> ViTOutput:
        batch, _, height, width = images.shape
        tokens = self.patch_embed(images)
        tokens = torch.cat((self.cls_token.expand(batch, -1, -1), tokens), dim=1)
        tokens = tokens + self.position_embedding(height, width)
        keys = tokens.new_empty(0)
        for block in self.blocks:
            tokens, keys = block(tokens)
        return ViTOutput(tokens, self.norm(tokens[:, 0]), keys)


def expected_shapes(config: ViTConfig = VIT_B8) -> dict[str, tuple[int, ...]]:
    """Parameter names and shapes of the checkpoint for ``config`` (DINO's naming)."""
    with torch.device("meta"):
        model = DinoViT(config)
    return {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}


def load_dino_vit(
    path: str | Path, config: ViTConfig = VIT_B8, device: str | torch.device = "cpu", what: str | None = None
) -> DinoViT:
    """Build the ViT from a DINO-layout checkpoint (``.pth`` state dict or ``.safetensors``), eval mode.

    Raises CheckpointError naming the file if a key is missing, unexpected or of the wrong shape.
    """
    what = what or f"DINO ViT (patch {config.patch_size}, dim {config.dim}, depth {config.depth})"
    state = read_state_dict(path, what)
    check_state_dict(state, expected_shapes(config), path, what)
    if any(not tensor.is_floating_point() for tensor in state.values()):
        raise CheckpointError(f"{path} is not a {what} checkpoint: it holds non-float tensors")
    with torch.device("meta"):
        model = DinoViT(config)
    model.load_state_dict({k: v.float() for k, v in state.items()}, assign=True)
    return model.eval().requires_grad_(False).to(device)


def load_dino_vitb8(path: str | Path, device: str | torch.device = "cpu") -> DinoViT:
    """Load DINO's ViT-B/8 (``dino_vitbase8_pretrain.pth``) for the CLS and Key-sim metrics."""
    return load_dino_vit(path, VIT_B8, device, DINO_VITB8_WHAT)
