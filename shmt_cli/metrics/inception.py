"""The FID Inception-v3: the TF 2015-12-05 graph as ported by pytorch-fid, up to the 2048-d pool3 features.

Parameter names follow torchvision's ``Inception3`` (``Conv2d_1a_3x3.conv.weight``,
``Mixed_5b.branch_pool.bn.running_var``, ..., ``fc.weight``), so ``pt_inception-2015-12-05-6726825d.pth``
(pytorch-fid) loads directly; torch-fidelity's ``weights-inception-2015-12-05-6726825d.pth`` uses the
same names. The FID graph differs from torchvision's ImageNet Inception in four places, kept here:

* the average-pool branches of the A, C and first E blocks (Mixed_5b-d, 6b-e, 7b) ignore the zero
  padding in the average (TF's ``avg_pool`` with SAME padding), i.e. ``count_include_pad=False``;
* the last E block (Mixed_7c) pools its pool branch with a 3x3 *max* pool instead of an average;
* the classifier has 1008 classes (``fc`` is loaded for completeness, never used for FID);
* there is no auxiliary classifier.

All convolutions are bias-free and followed by BatchNorm (eps 1e-3) and ReLU. Inputs are resized to
299x299 with bilinear interpolation (``align_corners=False``, no antialiasing) and scaled from [0, 1] to
[-1, 1], as pytorch-fid does, so scores are comparable with pytorch-fid's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from shmt_cli.metrics.paper import ImageBatch, check_state_dict, read_state_dict, resized_batches

FID_INCEPTION_WHAT = "FID Inception-v3 (pt_inception-2015-12-05)"
INCEPTION_INPUT_SIZE = 299
POOL3_DIM = 2048
FID_CLASSES = 1008

Kernel = int | tuple[int, int]


class BasicConv2d(nn.Module):
    """Bias-free conv, BatchNorm (eps 1e-3), ReLU."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: Kernel, stride: int = 1, padding: Kernel = 0
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False
        )
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _tf_avg_pool(x: torch.Tensor) -> torch.Tensor:
    # TF's SAME-padded average pool divides by the number of real pixels under the window.
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    """35x35 block: 1x1, 5x5, double 3x3 and pooled branches."""

    def __init__(self, in_channels: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 64, 1)
        self.branch5x5_1 = BasicConv2d(in_channels, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch5x5 = self.branch5x5_2(self.branch5x5_1(x))
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        pooled = self.branch_pool(_tf_avg_pool(x))
        return torch.cat((self.branch1x1(x), branch5x5, branch3x3dbl, pooled), dim=1)


class InceptionB(nn.Module):
    """35x35 -> 17x17 reduction block."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        pooled = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat((self.branch3x3(x), branch3x3dbl, pooled), dim=1)


class InceptionC(nn.Module):
    """17x17 block with factorised 7x7 convolutions."""

    def __init__(self, in_channels: int, channels_7x7: int) -> None:
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(in_channels, 192, 1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_channels, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch7x7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        branch7x7dbl = x
        for layer in (
            self.branch7x7dbl_1,
            self.branch7x7dbl_2,
            self.branch7x7dbl_3,
            self.branch7x7dbl_4,
            self.branch7x7dbl_5,
        ):
            branch7x7dbl = layer(branch7x7dbl)
        pooled = self.branch_pool(_tf_avg_pool(x))
        return torch.cat((self.branch1x1(x), branch7x7, branch7x7dbl, pooled), dim=1)


class InceptionD(nn.Module):
    """17x17 -> 8x8 reduction block."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_channels, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_channels, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch3x3 = self.branch3x3_2(self.branch3x3_1(x))
        branch7x7x3 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        pooled = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat((branch3x3, branch7x7x3, pooled), dim=1)


class InceptionE(nn.Module):
    """8x8 block with split 1x3 / 3x1 outputs; ``pool`` is "avg" for Mixed_7b and "max" for Mixed_7c."""

    def __init__(self, in_channels: int, pool: Literal["avg", "max"]) -> None:
        super().__init__()
        self.pool = pool
        self.branch1x1 = BasicConv2d(in_channels, 320, 1)
        self.branch3x3_1 = BasicConv2d(in_channels, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_channels, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch3x3 = self.branch3x3_1(x)
        branch3x3 = torch.cat((self.branch3x3_2a(branch3x3), self.branch3x3_2b(branch3x3)), dim=1)
        branch3x3dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        branch3x3dbl = torch.cat(
            (self.branch3x3dbl_3a(branch3x3dbl), self.branch3x3dbl_3b(branch3x3dbl)), dim=1
        )
        if self.pool == "max":
            # The FID graph max-pools here (unlike the Inception paper); reproducing it matters for FID.
            pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        else:
            pooled = _tf_avg_pool(x)
        pooled = self.branch_pool(pooled)
        return torch.cat((self.branch1x1(x), branch3x3, branch3x3dbl, pooled), dim=1)


class FidInceptionV3(nn.Module):
    """Input (B, 3, 299, 299) float32 in [-1, 1]; output (B, 2048) pool3 features (post-ReLU, >= 0)."""

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, pool="avg")
        self.Mixed_7c = InceptionE(2048, pool="max")
        self.fc = nn.Linear(POOL3_DIM, FID_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for block in (
            self.Mixed_5b,
            self.Mixed_5c,
            self.Mixed_5d,
            self.Mixed_6a,
            self.Mixed_6b,
            self.Mixed_6c,
            self.Mixed_6d,
            self.Mixed_6e,
            self.Mixed_7a,
            self.Mixed_7b,
            self.Mixed_7c,
        ):
            x = block(x)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)


def expected_shapes() -> dict[str, tuple[int, ...]]:
    """Key names and shapes of the FID Inception checkpoint (BatchNorm counters included)."""
    with torch.device("meta"):
        model = FidInceptionV3()
    return {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}


def load_fid_inception(path: str | Path, device: str | torch.device = "cpu") -> FidInceptionV3:
    """Build the FID Inception from ``pt_inception-2015-12-05-6726825d.pth`` (or safetensors), eval mode.

    Raises CheckpointError naming the file on a missing, unexpected or wrongly shaped key; torchvision's
    ImageNet Inception weights fail on ``fc`` (1000 classes, not 1008) and their ``AuxLogits`` keys.
    """
    state = read_state_dict(path, FID_INCEPTION_WHAT)
    shapes = expected_shapes()
    counters = [k for k in shapes if k.endswith("num_batches_tracked")]
    check_state_dict(state, shapes, path, FID_INCEPTION_WHAT, optional=counters)
    # Counters are unused in eval mode; older exports lack them.
    state = {k: (v if k in counters else v.float()) for k, v in state.items()}
    for key in counters:
        state.setdefault(key, torch.zeros((), dtype=torch.long))
    with torch.device("meta"):
        model = FidInceptionV3()
    model.load_state_dict(state, assign=True)
    return model.eval().requires_grad_(False).to(device)


@torch.no_grad()
def inception_features(
    model: FidInceptionV3,
    images: ImageBatch,
    batch_size: int = 16,
    device: str | torch.device | None = None,
) -> np.ndarray:
    """(N, 2048) float64 pool3 features of (H, W, 3) uint8 RGB images (any size, resized to 299)."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model = model.to(device)
    features = [
        model(batch * 2.0 - 1.0).double().cpu()
        for batch in resized_batches(images, INCEPTION_INPUT_SIZE, batch_size, antialias=False, device=device)
    ]
    if not features:
        return np.zeros((0, POOL3_DIM))
    return torch.cat(features).numpy()
