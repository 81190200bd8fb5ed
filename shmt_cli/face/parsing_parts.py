"""Eye, brow, nose, lips and ear refinement: a small network per part kind on a window around its landmarks.

dlib's eye and brow points land on painted liner and costume brows, and the rule-based outlines follow
them; the landmark template's nose starts below the contoured bridge that the official maps call nose;
the rules' ears are only what the skin region's GrabCut took beside the jaw.
Here each eye, each brow, the nose, the lips and each ear is re-decided on its own window of the photo:
a `PATCH_W` x `PATCH_H` px patch in the face frame (unit: interocular distance), centred on the part's
landmark centre (the ears: beside the upper jaw points) and larger than the part, so that a part the
points missed by a fraction of its size is still inside it. The image-right (subject's left) parts are
mirrored so that both sides share the weights; the nose is one part, its window transposed (patch x
down the nose) and reaching above the eye line; the lips (upper and lower as one part) are one window
over the mouth points, not mirrored; the ears' windows are transposed too.
A network per part kind (eyes, brows, nose, lips, ears) sees the patch's RGB, its Lab relative to the
patch's median, the current parse's mask of the part (the rules' outline: a prior it was trained to
distrust, dropped and shifted in training) and the patch coordinates, and predicts the part's logit per
patch pixel. The logits are resampled onto the photo (bilinear) and, with a bias and the current outline
as a weak prior (apply_logits), decide the part inside the window: part pixels rejected become skin
(the ears': background), and the labels a kind grows into (skin; for brows also hair; for ears skin,
hair and background) become the part where accepted (the nose swaps only skin and nose). The lips
swap with skin only, except that a rejected lip pixel nearer to the parse's inner mouth than to its
skin becomes inner mouth (an open mouth's rim); accepted skin becomes the nearer of the parse's upper
and lower lip. Outside the windows nothing changes.

The weights (`parsing_parts.safetensors`, beside this module, 0.5 MB) are written by
tools/parsing_parts_train.py, which states their data (the dev photos with the official parser's
maps) and objective; its metadata names, per parse method, the part kinds re-decided and their bias
and prior weight, chosen by held-out IoU. Without the file the stage is skipped. About 19 ms CPU per
face on a 256 px crop (eight 64 x 48 patches, one torch thread; about 5 ms of it the nose, seen both
ways, 3 ms the lips and 4 ms the two ears). default_model() folds the batch norms into the
convolutions (parsing_net.fold_batch_norms), about 1 ms less; load_model() keeps them, for training.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from shmt_cli.face.labels import (
    BACKGROUND,
    HAIR,
    L_BROW,
    L_EAR,
    L_EYE,
    L_LIP,
    MOUTH,
    NOSE,
    R_BROW,
    R_EAR,
    R_EYE,
    SKIN,
    U_LIP,
)
from shmt_cli.face.parsing_net import conv_bn_relu, fold_batch_norms
from shmt_cli.face.parsing_shapes import Frame

WEIGHTS_PATH = Path(__file__).with_name("parsing_parts.safetensors")

PATCH_W = 64
PATCH_H = 48


@dataclass(frozen=True)
class PartKind:
    """Window of one part kind in the face frame: half sizes (iod) and the centre's offset from the
    landmark centre (offset_u along u towards the face's outside, offset_v down)."""

    name: str
    half_u: float
    half_v: float
    offset_v: float
    # Labels the part may take over (besides its own).
    grows_into: tuple[int, ...]
    # Patch x runs along v (down the face) and patch y along u: a tall part in the wide patch.
    transposed: bool = False
    offset_u: float = 0.0
    # What a pixel of the part that the network rejects becomes.
    rejected_to: int = SKIN


EYES = PartKind("eyes", 0.36, 0.27, 0.0, (SKIN,))
# The brows' window reaches 0.46 iod above the brow points' centre and 0.38 below (the upper lid): costume
# makeup draws brows well above blocked-out ones (dev photo 21018: the official brows 0.14-0.42 iod above
# the points), at about 0.017 iod per patch pixel both ways.
BROWS = PartKind("brows", 0.55, 0.42, -0.04, (SKIN, HAIR))
# The nose's landmark centre (27..35) is about 0.5 iod below the eye line; the window reaches 0.45 iod
# above it (the official parser's bridge on contoured faces) and 0.95 below (under the nostrils), at
# about 0.02 iod per patch pixel both ways (transposed: 64 px along the nose, 48 across).
NOSE_KIND = PartKind("nose", 0.45, 0.7, -0.25, (SKIN,), transposed=True)
# The lips: one window over the mouth points 48..67 (about 0.8 iod wide, 0.35 high), with a margin of
# skin for overdrawn or shrunk outlines; 0.019 iod per patch pixel both ways. Upper and lower lip are
# one part to the network (the split follows the current parse, apply_logits).
LIPS_KIND = PartKind("lips", 0.6, 0.45, 0.0, (SKIN,))
# The ears, beside the jaw points 0..3 (13..16 mirrored): on the dev photos' align crops the official ears
# lie -0.07..0.37 iod outside those points' centre and 0.6 above to 0.45 below it (2nd..98th
# percentiles). The window reaches 0.2 iod inside (the cheek's edge) and 0.44 outside, 0.68 above and
# 0.52 below; transposed (64 px down the ear, 0.019 iod per px; 48 across, 0.013). An ear pixel that
# the network rejects is background (hair or what is behind the head), and accepted background, hair or
# skin (the cheek's edge, which the official maps often call ear) becomes ear: the rules' ear is the
# skin region in a zone beside the jaw, and GrabCut often stops short of an ear that its colour samples
# (the face interior) do not explain.
EARS = PartKind(
    "ears", 0.32, 0.6, -0.08, (SKIN, BACKGROUND, HAIR), transposed=True, offset_u=0.12, rejected_to=BACKGROUND
)
KINDS = (EYES, BROWS, NOSE_KIND, LIPS_KIND, EARS)
LIP_LABELS = (U_LIP, L_LIP)
# (kind, label, landmark slice, mirrored): image-left parts as they are, image-right ones mirrored; the
# nose is one symmetric part, not mirrored (its network was trained on both orientations).
PARTS = (
    (EYES, R_EYE, slice(36, 42), False),
    (EYES, L_EYE, slice(42, 48), True),
    (BROWS, R_BROW, slice(17, 22), False),
    (BROWS, L_BROW, slice(22, 27), True),
    (NOSE_KIND, NOSE, slice(27, 36), False),
    (LIPS_KIND, U_LIP, slice(48, 68), False),
    (EARS, R_EAR, slice(0, 4), False),
    (EARS, L_EAR, slice(13, 17), True),
)
IN_CHANNELS = 3 + 3 + 1 + 2
# The patch coordinates are the last two input channels.
COORD_START = IN_CHANNELS - 2
# Kinds whose logits are the mean over the window and its mirror image (trained on both orientations;
# the lips, also trained so, score 0.001 lower that way held out: see kind_logits).
MIRROR_AVERAGED = (NOSE_KIND,)


def part_mask(labels: np.ndarray, label: int) -> np.ndarray:
    """Bool mask of a part's label in labels; the lips (label U_LIP in PARTS) are both lip labels."""
    return np.isin(labels, LIP_LABELS) if label in LIP_LABELS else labels == label


def patch_affine(kind: PartKind, points: np.ndarray, frame: Frame, mirrored: bool) -> np.ndarray:
    """(2, 3) map from patch pixel (x, y) (pixel centres at integers) to photo pixel of a part's window.

    points: (K, 2) the part's landmarks (photo pixels); frame: the face frame.
    """
    outward = frame.u if mirrored else -frame.u  # image-left parts are the unmirrored ones
    centre = points.mean(axis=0) + frame.iod * (kind.offset_v * frame.v + kind.offset_u * outward)
    along_u, along_v = (PATCH_H, PATCH_W) if kind.transposed else (PATCH_W, PATCH_H)
    su = 2 * kind.half_u * frame.iod / along_u
    sv = 2 * kind.half_v * frame.iod / along_v
    # u, v: photo step per patch pixel along x and y.
    u = frame.u * (-su if mirrored else su)
    v = frame.v * sv
    if kind.transposed:
        u, v = v, u
    # Photo point of patch pixel (x, y): centre + (x + 0.5 - W / 2) u + (y + 0.5 - H / 2) v.
    origin = centre + (0.5 - PATCH_W / 2) * u + (0.5 - PATCH_H / 2) * v
    return np.stack([u, v, origin], axis=1)


def sample_patch(image: np.ndarray, affine: np.ndarray, nearest: bool = False) -> np.ndarray:
    """The patch (PATCH_H, PATCH_W[, C]) of image under a patch -> image affine (2, 3).

    Bilinear (blurred first where a patch pixel spans more than 1.5 photo pixels, against aliasing)
    or nearest for label maps; outside the image the border is replicated.
    """
    step = float(np.sqrt(abs(np.linalg.det(affine[:, :2]))))
    if not nearest and step > 1.5:
        # Blur only the window's bounding box (plus the kernel's reach).
        corners = affine @ np.array([[0, 0, 1], [PATCH_W, 0, 1], [0, PATCH_H, 1], [PATCH_W, PATCH_H, 1.0]]).T
        sigma = 0.5 * step
        pad = int(3 * sigma) + 2
        x0, y0 = np.maximum(np.floor(corners.min(axis=1)).astype(int) - pad, 0)
        x1, y1 = np.ceil(corners.max(axis=1)).astype(int) + pad + 1
        region = image[y0:y1, x0:x1]
        if region.size:
            image = cv2.GaussianBlur(region, (0, 0), sigma)
            affine = affine - np.array([[0, 0, x0], [0, 0, y0]], np.float64)
    flags = (cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR) | cv2.WARP_INVERSE_MAP
    return cv2.warpAffine(image, affine, (PATCH_W, PATCH_H), flags=flags, borderMode=cv2.BORDER_REPLICATE)


@functools.cache
def _coordinates() -> np.ndarray:
    """(2, PATCH_H, PATCH_W) float32 patch coordinates in [-1, 1] (x, then y)."""
    x = (np.arange(PATCH_W, dtype=np.float32) + 0.5) / PATCH_W * 2 - 1
    y = (np.arange(PATCH_H, dtype=np.float32) + 0.5) / PATCH_H * 2 - 1
    return np.stack(
        [np.broadcast_to(x[None, :], (PATCH_H, PATCH_W)), np.broadcast_to(y[:, None], (PATCH_H, PATCH_W))]
    )


def patch_input(rgb_patch: np.ndarray, prior: np.ndarray | None) -> np.ndarray:
    """(IN_CHANNELS, PATCH_H, PATCH_W) float32 network input.

    rgb_patch: (PATCH_H, PATCH_W, 3) uint8; prior: (PATCH_H, PATCH_W) the current parse's mask of the
    part (bool or 0..1 float), or None for none (a zero channel). Lab is relative to the patch's
    median and spread, so the network sees what stands out in the window whatever the makeup's colour.
    """
    lab = cv2.cvtColor(rgb_patch.astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab).reshape(-1, 3)
    median = np.median(lab, axis=0)
    spread = np.median(np.abs(lab - median), axis=0) * 1.4826 + np.array([3.0, 2.0, 2.0], np.float32)
    rel = (np.clip((lab - median) / spread, -8.0, 8.0) / 4.0).reshape(PATCH_H, PATCH_W, 3)
    rgb = rgb_patch.astype(np.float32) / 255.0 - 0.5
    mask = np.zeros((PATCH_H, PATCH_W), np.float32) if prior is None else prior.astype(np.float32)
    return np.concatenate(
        [rgb.transpose(2, 0, 1), rel.transpose(2, 0, 1), mask[None], _coordinates()]
    ).astype(np.float32)


# ----------------------------------------------------------------------------------------------------------
# network


class PartNet(nn.Module):
    """Small U-Net: (N, IN_CHANNELS, PATCH_H, PATCH_W) -> (N, 1, PATCH_H, PATCH_W) part logits."""

    def __init__(self, in_channels: int = IN_CHANNELS, widths: tuple[int, int, int] = (12, 24, 32)) -> None:
        super().__init__()
        a, b, c = widths
        self.enc1 = conv_bn_relu(in_channels, a)
        self.enc2 = nn.Sequential(conv_bn_relu(a, b, stride=2), conv_bn_relu(b, b))
        self.enc3 = nn.Sequential(
            conv_bn_relu(b, c, stride=2), conv_bn_relu(c, c, dilation=2), conv_bn_relu(c, c, dilation=4)
        )
        self.dec2 = conv_bn_relu(c + b, b)
        self.dec1 = conv_bn_relu(b + a, a)
        self.head = nn.Conv2d(a, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(e1)
        e3 = self.enc3(e2)
        d2 = self.dec2(torch.cat([F.interpolate(e3, size=e2.shape[2:], mode="bilinear"), e2], 1))
        d1 = self.dec1(torch.cat([F.interpolate(d2, size=e1.shape[2:], mode="bilinear"), e1], 1))
        return self.head(d1)


@dataclass
class PartsModel:
    """The per-kind networks (eval mode) and, per parse method, the part kinds they decide (chosen by
    held-out IoU in tools/parsing_parts_train.py)."""

    nets: dict[str, PartNet]
    kinds_for: dict[str, tuple[str, ...]]
    # Per parse method: (logit bias, prior weight) per kind (apply_logits).
    settings_for: dict[str, dict[str, tuple[float, float]]]


def load_model(path: str | Path = WEIGHTS_PATH) -> PartsModel:
    """A PartsModel from a safetensors file with keys '<kind>.<parameter>' and, in its metadata,
    '<method>' -> comma-separated kinds and '<method>_settings' -> 'kind=bias:prior_weight,...' for
    each parse method."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    state = load_file(str(path))
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    nets = {}
    for kind in KINDS:
        prefix = kind.name + "."
        if not any(k.startswith(prefix) for k in state):
            continue  # a file without this kind's network (it is then never run)
        net = PartNet()
        net.load_state_dict({k[len(prefix) :]: v.float() for k, v in state.items() if k.startswith(prefix)})
        # Channels-last runs these small convolutions about twice as fast on CPU.
        nets[kind.name] = net.eval().to(memory_format=torch.channels_last)
    kinds_for = {
        method: tuple(filter(None, metadata.get(method, "").split(","))) for method in ("rules", "net")
    }
    settings_for = {}
    for method in ("rules", "net"):
        entries = [e.split("=") for e in metadata.get(method + "_settings", "").split(",") if e]
        settings_for[method] = {
            name: (float(value.split(":")[0]), float(value.split(":")[1])) for name, value in entries
        }
    return PartsModel(nets, kinds_for, settings_for)


@functools.cache
def default_model() -> PartsModel | None:
    """The shipped model (batch norms folded for inference), or None when the weights file is absent
    (the stage is then skipped)."""
    if not WEIGHTS_PATH.is_file():
        return None
    model = load_model()
    for net in model.nets.values():
        fold_batch_norms(net)
    return model


# ----------------------------------------------------------------------------------------------------------
# inference


def kind_logits(net: PartNet, kind: PartKind, x: torch.Tensor) -> torch.Tensor:
    """(N, PATCH_H, PATCH_W) logits of one kind's network for inputs x (N, IN_CHANNELS, PATCH_H, PATCH_W).

    For the kinds of MIRROR_AVERAGED, the mean of the window's and its mirror image's logits (the
    mirror mapped back): the part seen both ways, so that the decision does not hang on which side of
    the nose a contour stroke or a highlight lies. The mirrored window is the patch flipped across u
    (along x, or y for a transposed window); its coordinate channels stay as they are. Held out on
    the dev photos' 256 px align crops (tools/parsing_parts_train.py --kfold 3 --aligned 256), made-up
    / bare nose 0.867 / 0.893 -> 0.871 / 0.896; the lips that way 0.875 / 0.914 -> 0.874 / 0.913.
    """
    if kind not in MIRROR_AVERAGED:
        return net(x)[:, 0]
    axis = -2 if kind.transposed else -1
    mirrored = x.clone()
    mirrored[:, :COORD_START] = x[:, :COORD_START].flip(axis)
    # Both views in one batch: one pass through the network's layers instead of two.
    both = net(torch.cat([x, mirrored]).contiguous(memory_format=torch.channels_last))[:, 0]
    return 0.5 * (both[: len(x)] + both[len(x) :].flip(axis))


def part_logits(
    nets: dict[str, PartNet],
    rgb: np.ndarray,
    landmarks: np.ndarray,
    labels: np.ndarray,
    kinds: tuple[str, ...] = tuple(kind.name for kind in KINDS),
) -> list[tuple[int, PartKind, np.ndarray, np.ndarray]]:
    """(label, kind, patch -> photo affine (2, 3), logits (PATCH_H, PATCH_W) float32) per part of PARTS
    whose kind is named in kinds."""
    frame = Frame(landmarks)
    inputs, metas = [], []
    for kind, label, points, mirrored in PARTS:
        if kind.name not in kinds or kind.name not in nets:
            continue
        affine = patch_affine(kind, landmarks[points], frame, mirrored)
        prior = sample_patch(part_mask(labels, label).astype(np.uint8), affine, nearest=True)
        inputs.append(patch_input(sample_patch(rgb, affine), prior))
        metas.append((label, kind, affine))
    if not inputs:
        return []
    with torch.no_grad():
        x = torch.from_numpy(np.stack(inputs)).contiguous(memory_format=torch.channels_last)
        out = {}
        for kind in KINDS:
            idx = [i for i, m in enumerate(metas) if m[1] is kind]
            if not idx:
                continue
            logits = kind_logits(nets[kind.name], kind, x[idx]).numpy()
            out.update(dict(zip(idx, logits, strict=True)))
    return [(label, kind, affine, out[i]) for i, (label, kind, affine) in enumerate(metas)]


def apply_logits(
    labels: np.ndarray,
    parts: list[tuple[int, PartKind, np.ndarray, np.ndarray]],
    settings: dict[str, tuple[float, float]] | None = None,
) -> np.ndarray:
    """Labels (H, W) uint8 with each part re-decided inside its window.

    The decision is logit + bias + prior_weight * (+1 inside the part's current label, -1 outside),
    with (bias, prior_weight) = settings[kind] ((0, 0) when not given): the weight lets the current
    outline (the rules') count as a weak prior next to the network.
    """
    out = labels.copy()
    height, width = labels.shape
    corners_px = np.array(
        [
            [-0.5, -0.5, 1],
            [PATCH_W - 0.5, -0.5, 1],
            [-0.5, PATCH_H - 0.5, 1],
            [PATCH_W - 0.5, PATCH_H - 0.5, 1.0],
        ]
    ).T
    for label, kind, affine, logits in parts:
        bias, weight = (settings or {}).get(kind.name, (0.0, 0.0))
        corners = affine @ corners_px
        x0, y0 = np.maximum(np.floor(corners.min(axis=1)).astype(int), 0)
        x1, y1 = np.ceil(corners.max(axis=1)).astype(int) + 1
        x1, y1 = min(int(x1), width), min(int(y1), height)
        if x1 <= x0 or y1 <= y0:
            continue
        shifted = affine - np.array([[0, 0, x0], [0, 0, y0]], np.float64)
        # Outside the patch the logit is "no opinion": a sentinel far below any network output.
        value = cv2.warpAffine(
            logits.astype(np.float32),
            shifted,
            (int(x1 - x0), int(y1 - y0)),
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=-1e4,
        )
        inside = value > -1e3
        window = out[y0:y1, x0:x1]
        current = part_mask(window, label)
        part = inside & (value + bias + weight * np.where(current, 1.0, -1.0) > 0)
        if kind is LIPS_KIND:
            _swap_lips(window, inside & current & ~part, part & np.isin(window, kind.grows_into))
            continue
        window[inside & current & ~part] = kind.rejected_to
        window[part & np.isin(window, kind.grows_into)] = label
    return out


def _nearer(window: np.ndarray, first: int, second: int) -> np.ndarray:
    """Bool (h, w): pixels of the window nearer to label `first` than to `second` (ties: first)."""
    far = float(sum(window.shape))
    dist = []
    for value in (first, second):
        other = (window != value).astype(np.uint8)
        dist.append(
            cv2.distanceTransform(other, cv2.DIST_L2, 3) if not other.all() else np.full(window.shape, far)
        )
    return dist[0] <= dist[1]


def _swap_lips(window: np.ndarray, rejected: np.ndarray, accepted: np.ndarray) -> None:
    """In place on a window of labels: rejected lip pixels become inner mouth where they are nearer to
    the parse's inner mouth than to its skin (the open mouth's rim; ties: mouth), else skin; accepted
    (skin) pixels become the upper or lower lip, whichever of the parse's lips is nearer (the upper one
    without either)."""
    if not (rejected.any() or accepted.any()):
        return
    before = window.copy()
    if accepted.any():
        window[accepted] = np.where(_nearer(before, U_LIP, L_LIP)[accepted], U_LIP, L_LIP)
    if rejected.any():
        window[rejected] = np.where(
            _nearer(before, MOUTH, SKIN)[rejected] & (before == MOUTH).any(), MOUTH, SKIN
        )


def refine_parts(
    rgb: np.ndarray, landmarks: np.ndarray, labels: np.ndarray, method: str, model: PartsModel | None = None
) -> np.ndarray:
    """Labels (H, W) uint8 with the part kinds that the model (default: the shipped one) decides after
    parse method `method` ("rules" or "net") re-decided; unchanged without a model.
    rgb: (H, W, 3) uint8; landmarks: (68, 2) float; labels: (H, W) uint8 of that method."""
    model = default_model() if model is None else model
    if model is None or not model.kinds_for.get(method):
        return labels
    kinds = model.kinds_for[method]
    parts = part_logits(model.nets, rgb, np.asarray(landmarks, np.float64), labels, kinds)
    return apply_logits(labels, parts, model.settings_for.get(method))
