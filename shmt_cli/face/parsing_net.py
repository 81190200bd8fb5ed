"""Learned refinement of the rule-based face parsing: a compact CNN over the photo and the rules' parse.

The face is resampled into a canonical crop (`CROP_SIZE` px square, fixed box of the landmark face
frame), where the rule-based parse (`parsing.parse_rules` with fast=True: landmark parts moved by
colour, a cheaper GrabCut skin region, hair) is the prior. The network sees the crop's RGB, its Lab
relative to the face's skin, the prior as one-hot channels and the face-frame coordinates, and
predicts a residual over the prior's own logits for the 19 CelebAMask-HQ classes per crop pixel; they
are resampled back onto the photo (bilinear), the prior's logits are added at the photo's resolution,
and the arg-max is the label. Outside the crop the prior's labels stay.

The weights (`parsing_net.safetensors`, beside this module) are written by tools/parsing_train.py,
which states their data (the dev photos with the official parser's maps) and objective.
"""

from __future__ import annotations

import functools
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from shmt_cli.face import parsing
from shmt_cli.face.labels import NUM_LABELS, Label
from shmt_cli.face.parsing_shapes import face_frame

WEIGHTS_PATH = Path(__file__).with_name("parsing_net.safetensors")

# Canonical crop: CROP_SIZE px square covering u in CROP_U and v in CROP_V (face frame: origin between
# the eye centres, u along the eyes, v down, unit = interocular distance). SHMT-style 256 px crops
# span about 3.3 x 3.3 units; the box adds a little room for the neck and the sides of the head.
CROP_SIZE = 128
CROP_U = (-1.75, 1.75)
CROP_V = (-1.45, 2.05)

# Prior classes given to the network as one-hot channels (the face region, then the parts).
PRIOR_CLASSES = (
    Label.SKIN,
    Label.NOSE,
    Label.L_EYE,
    Label.R_EYE,
    Label.L_BROW,
    Label.R_BROW,
    Label.U_LIP,
    Label.L_LIP,
    Label.MOUTH,
    Label.HAIR,
)
# Prior labels that count as the face region channel.
PRIOR_FACE = (Label.SKIN, Label.NECK, Label.L_EAR, Label.R_EAR)
# Skin sample for the per-image colour normalisation: prior skin or nose pixels in this box of the face
# frame (cheeks and nose between the eyes and the mouth), as (u0, u1, v0, v1).
SKIN_SAMPLE_BOX = (-0.8, 0.8, 0.1, 0.9)
# Input: RGB, Lab relative to the face's own skin (3), prior one-hot, face-frame coordinates (2).
IN_CHANNELS = 3 + 3 + len(PRIOR_CLASSES) + 2
PRIOR_START = 6
WIDTHS = (8, 16, 32, 64)
# Initial logit of a prior part's own class (the face region channel gives skin 2, background 1).
PRIOR_PART_LOGIT = 4.0

# Part groups that a weights file may leave to the prior (the rules' labels, not the network's):
# tools/parsing_train.py picks them by held-out IoU and names them in the file's metadata
# ("prior_parts", comma-separated).
PART_GROUPS: dict[str, tuple[int, ...]] = {
    "eyes": (Label.L_EYE, Label.R_EYE),
    "brows": (Label.L_BROW, Label.R_BROW),
    "nose": (Label.NOSE,),
    "mouth": (Label.U_LIP, Label.L_LIP, Label.MOUTH),
}

# Label ids exchanged by a horizontal flip (subject's left <-> right).
FLIP_PAIRS = (
    (Label.L_EYE, Label.R_EYE),
    (Label.L_BROW, Label.R_BROW),
    (Label.L_EAR, Label.R_EAR),
)


def flip_table() -> np.ndarray:
    """(19,) uint8 map of label ids under a horizontal flip."""
    table = np.arange(NUM_LABELS, dtype=np.uint8)
    for a, b in FLIP_PAIRS:
        table[a], table[b] = b, a
    return table


# ----------------------------------------------------------------------------------------------------------
# canonical crop


def crop_affine(landmarks: np.ndarray) -> np.ndarray:
    """2x3 float64 affine map from image pixels to canonical-crop pixels for 68 landmarks."""
    frame = face_frame(landmarks)
    ppu = CROP_SIZE / (CROP_U[1] - CROP_U[0])  # crop pixels per interocular distance
    rot = np.stack([frame.u, frame.v]) * (ppu / frame.iod)
    # Crop pixel centres at integers: u = CROP_U[0] maps to -0.5.
    offset = -rot @ frame.origin - ppu * np.array([CROP_U[0], CROP_V[0]]) - 0.5
    return np.hstack([rot, offset[:, None]])


def warp_to_crop(
    image: np.ndarray, affine: np.ndarray, size: int = CROP_SIZE, nearest: bool = False
) -> np.ndarray:
    """Resample an (H, W[, C]) image into a size x size crop by the 2x3 affine (image -> crop).

    Large downscales first shrink the covered part of the image with an area filter (no aliasing).
    Outside the image is 0.
    """
    scale = float(np.sqrt(abs(np.linalg.det(affine[:, :2]))))
    flags = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
    if nearest or scale > 0.7:
        return cv2.warpAffine(image, affine, (size, size), flags=flags, borderMode=cv2.BORDER_CONSTANT)
    full = np.vstack([affine, [0.0, 0.0, 1.0]])
    corners = np.array([[0, 0], [size, 0], [0, size], [size, size]], np.float64) - 0.5
    back = (np.linalg.inv(full)[:2] @ np.hstack([corners, np.ones((4, 1))]).T).T
    height, width = image.shape[:2]
    left, top = np.clip(np.floor(back.min(axis=0)).astype(int) - 2, 0, [width, height])
    right, bottom = np.clip(np.ceil(back.max(axis=0)).astype(int) + 2, 0, [width, height])
    if right - left < 2 or bottom - top < 2:
        shape = (size, size, *image.shape[2:])
        return np.zeros(shape, image.dtype)
    roi = image[top:bottom, left:right]
    small_w, small_h = max(2, round((right - left) * scale)), max(2, round((bottom - top) * scale))
    small = cv2.resize(roi, (small_w, small_h), interpolation=cv2.INTER_AREA)
    fx, fy = small_w / (right - left), small_h / (bottom - top)
    # small pixel r <-> image pixel x: x = (r + 0.5) / f - 0.5 + corner.
    to_image = np.array([[1 / fx, 0, 0.5 / fx - 0.5 + left], [0, 1 / fy, 0.5 / fy - 0.5 + top], [0, 0, 1]])
    return cv2.warpAffine(
        small, (full @ to_image)[:2], (size, size), flags=flags, borderMode=cv2.BORDER_CONSTANT
    )


def prior_onehot(prior: np.ndarray) -> np.ndarray:
    """(len(PRIOR_CLASSES), S, S) float32 one-hot channels of a prior label map (S, S)."""
    face = np.isin(prior, PRIOR_FACE) | np.isin(prior, PRIOR_CLASSES)
    channels = [face] + [prior == cls for cls in PRIOR_CLASSES[1:]]
    return np.stack(channels).astype(np.float32)


@functools.cache
def coordinate_channels() -> np.ndarray:
    """(2, S, S) float32 face-frame u and v of the crop pixels, scaled to about [-1, 1]."""
    axis = (np.arange(CROP_SIZE, dtype=np.float32) + 0.5) / CROP_SIZE * 2 - 1
    return np.stack(np.meshgrid(axis, axis, indexing="xy")).astype(np.float32)


@functools.cache
def _skin_box() -> np.ndarray:
    """Boolean (S, S): the crop pixels inside SKIN_SAMPLE_BOX."""
    ppu = CROP_SIZE / (CROP_U[1] - CROP_U[0])
    u0, u1, v0, v1 = SKIN_SAMPLE_BOX
    axis = np.arange(CROP_SIZE) + 0.5
    cols = (axis >= (u0 - CROP_U[0]) * ppu) & (axis <= (u1 - CROP_U[0]) * ppu)
    rows = (axis >= (v0 - CROP_V[0]) * ppu) & (axis <= (v1 - CROP_V[0]) * ppu)
    return rows[:, None] & cols[None, :]


def skin_relative_lab(crop_rgb: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """(3, S, S) float32 CIELAB of the crop relative to this face's skin: (value - median) / spread.

    The median and spread (scaled median absolute deviation, floored) come from the prior's skin and
    nose pixels on the cheeks and nose; foundation, tans and lighting shift all of them together, so
    the network sees what is like this face's skin and what is not.
    """
    lab = cv2.cvtColor(crop_rgb.astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab)
    sample = _skin_box() & np.isin(prior, (Label.SKIN, Label.NOSE))
    if sample.sum() < 20:
        sample = np.isin(prior, (Label.SKIN, Label.NOSE))
    if sample.sum() < 20:
        return np.zeros((3, CROP_SIZE, CROP_SIZE), np.float32)
    pixels = lab[sample]
    median = np.median(pixels, axis=0)
    spread = np.median(np.abs(pixels - median), axis=0) * 1.4826 + np.array([3.0, 2.0, 2.0])
    rel = np.clip((lab - median) / spread, -8.0, 8.0) / 4.0
    return rel.transpose(2, 0, 1).astype(np.float32)


def network_input(crop_rgb: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """(IN_CHANNELS, S, S) float32 input from a crop (S, S, 3) uint8 and its prior labels (S, S)."""
    rgb = crop_rgb.astype(np.float32).transpose(2, 0, 1) / 255.0 - 0.5
    return np.concatenate(
        [rgb, skin_relative_lab(crop_rgb, prior), prior_onehot(prior), coordinate_channels()]
    )


def mirrored_input(x: np.ndarray) -> np.ndarray:
    """network_input of the mirrored crop and prior, (IN_CHANNELS, S, S) float32, from that of the crop.

    The same values as computing it anew: colours and skin-relative Lab are per pixel, the skin
    sample's box is symmetric (so the median and spread come from the same pixels), the prior's
    left/right channels swap with flip_table, and the face-frame coordinates stay the crop's own.
    """
    table = flip_table()
    # Channel of the mirrored prior's class c is that of the original prior's class table[c].
    channel = {cls: k for k, cls in enumerate(PRIOR_CLASSES)}
    order = [0] + [channel[int(table[cls])] for cls in PRIOR_CLASSES[1:]]
    onehot = x[PRIOR_START : PRIOR_START + len(PRIOR_CLASSES)][order]
    return np.concatenate([x[:PRIOR_START, :, ::-1], onehot[:, :, ::-1], coordinate_channels()])


# ----------------------------------------------------------------------------------------------------------
# network


def conv_bn_relu(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    """3x3 convolution (no bias), batch norm, ReLU: the unit of the parsing networks."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def fold_batch_norms(net: nn.Module) -> nn.Module:
    """net (eval mode, in place) with every conv_bn_relu's batch norm folded into its convolution.

    Inference only (the folded network cannot be trained or saved as a state dict of the original
    layout): the logits equal the unfolded network's up to float rounding (about 1e-5), one pass
    over the activations fewer per unit (about 1 ms of the part networks' 19 per face).
    """
    for unit in net.modules():
        if not isinstance(unit, nn.Sequential) or len(unit) != 3:
            continue
        conv, norm = unit[0], unit[1]
        if not (isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d)):
            continue
        with torch.no_grad():
            scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
            bias = norm.bias - norm.running_mean * scale
            if conv.bias is not None:
                bias = bias + conv.bias * scale
            fused = nn.Conv2d(
                conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                conv.dilation, conv.groups, bias=True,
            )  # fmt: skip
            fused.weight.copy_(conv.weight * scale[:, None, None, None])
            fused.bias.copy_(bias)
        unit[0] = fused.to(memory_format=torch.channels_last)
        unit[1] = nn.Identity()
    return net.eval()


class ParsingNet(nn.Module):
    """Small U-Net refining a prior: (N, IN_CHANNELS, S, S) -> (N, 19, S, S) logits; S divisible by 8.

    The logits are the prior's own logits (a 1x1 map of the prior channels, `prior_logits`) plus a
    residual from four scales (WIDTHS) with a dilated bottleneck for context and additive skips. The
    residual head starts at zero, so an untrained network returns the prior and training learns where
    the image disagrees with it.
    """

    def __init__(self, in_channels: int = IN_CHANNELS, widths: tuple[int, ...] = WIDTHS) -> None:
        super().__init__()
        # Names of PART_GROUPS whose labels the prior decides (read from the weights file's metadata).
        self.prior_parts: tuple[str, ...] = ()
        w0, w1, w2, w3 = widths
        self.enc0 = nn.Sequential(conv_bn_relu(in_channels, w0), conv_bn_relu(w0, w0))
        self.enc1 = nn.Sequential(conv_bn_relu(w0, w1, stride=2), conv_bn_relu(w1, w1))
        self.enc2 = nn.Sequential(conv_bn_relu(w1, w2, stride=2), conv_bn_relu(w2, w2))
        self.enc3 = nn.Sequential(
            conv_bn_relu(w2, w3, stride=2), conv_bn_relu(w3, w3, dilation=2), conv_bn_relu(w3, w3, dilation=4)
        )
        self.lat2, self.lat1, self.lat0 = nn.Conv2d(w3, w2, 1), nn.Conv2d(w2, w1, 1), nn.Conv2d(w1, w0, 1)
        self.dec2, self.dec1, self.dec0 = conv_bn_relu(w2, w2), conv_bn_relu(w1, w1), conv_bn_relu(w0, w0)
        self.head = nn.Conv2d(w0, NUM_LABELS, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        # Prior logits: background outside the face region, skin inside, a prior part above both.
        self.prior_logits = nn.Conv2d(len(PRIOR_CLASSES), NUM_LABELS, 1)
        with torch.no_grad():
            self.prior_logits.weight.zero_()
            self.prior_logits.bias.zero_()
            # Mild: the residual must be able to overrule the prior where the image disagrees.
            self.prior_logits.bias[Label.BACKGROUND] = 1.0
            for channel, cls in enumerate(PRIOR_CLASSES):
                self.prior_logits.weight[cls, channel] = 2.0 if channel == 0 else PRIOR_PART_LOGIT

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 19, S, S) correction the image makes to the prior's logits."""
        e0 = self.enc0(x)
        e1 = self.enc1(e0)
        e2 = self.enc2(e1)
        e3 = self.enc3(e2)
        d2 = self.dec2(e2 + _up(self.lat2(e3)))
        d1 = self.dec1(e1 + _up(self.lat1(d2)))
        d0 = self.dec0(e0 + _up(self.lat0(d1)))
        return self.head(d0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        prior = x[:, PRIOR_START : PRIOR_START + len(PRIOR_CLASSES)]
        return self.residual(x) + self.prior_logits(prior)

    def prior_classes(self) -> tuple[int, ...]:
        """Label ids that the prior decides (the classes of the groups in prior_parts)."""
        return tuple(cls for name in self.prior_parts for cls in PART_GROUPS[name])

    def prior_table(self) -> np.ndarray:
        """(19, 19) float32: the prior logits (columns) of a pixel whose prior label is the row."""
        # One row of one-hot channels per label id: prior_onehot of a (1, 19) map of all ids.
        onehot = prior_onehot(np.arange(NUM_LABELS, dtype=np.uint8)[None, :])[:, 0, :].T
        weight = self.prior_logits.weight.detach()[:, :, 0, 0].numpy()
        return (onehot @ weight.T + self.prior_logits.bias.detach().numpy()).astype(np.float32)


def _up(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)


def load_net(path: str | Path = WEIGHTS_PATH) -> ParsingNet:
    """ParsingNet in eval mode with weights from a safetensors file (ValueError naming the file if bad)."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    path = Path(path)
    net = ParsingNet()
    try:
        state = load_file(str(path))
        net.load_state_dict({k: v.float() for k, v in state.items()})
        with safe_open(str(path), "pt") as handle:
            metadata = handle.metadata() or {}
    except (OSError, RuntimeError, ValueError, SafetensorError) as exc:
        raise ValueError(f"{path}: cannot load parsing weights ({exc})") from exc
    parts = tuple(filter(None, metadata.get("prior_parts", "").split(",")))
    unknown = sorted(set(parts) - set(PART_GROUPS))
    if unknown:
        raise ValueError(f"{path}: unknown prior_parts {unknown}; expected some of {sorted(PART_GROUPS)}")
    net.prior_parts = parts
    # Channels-last weights (and inputs, crop_residual): oneDNN's convolutions run about a third faster
    # on one CPU thread than with the default layout, for the same arithmetic up to rounding.
    return net.to(memory_format=torch.channels_last).eval()


@functools.cache
def default_net() -> ParsingNet:
    """The shipped refinement network (loaded once per process), batch norms folded for inference."""
    return fold_batch_norms(load_net(WEIGHTS_PATH))


# ----------------------------------------------------------------------------------------------------------
# inference


def crop_residual(
    net: ParsingNet, crop_rgb: np.ndarray, prior: np.ndarray, mirror: bool = True
) -> torch.Tensor:
    """(19, S, S) float32 residual logits for one crop (S, S, 3) uint8 and its prior (S, S).

    mirror: average with the residual of the mirrored crop (the crop is symmetric about the face's
    midline; left/right labels swapped back), one batch of two.
    """
    inputs = [network_input(crop_rgb, prior)]
    table = flip_table()
    if mirror:
        inputs.append(mirrored_input(inputs[0]))
    with torch.inference_mode():
        x = torch.from_numpy(np.stack(inputs)).contiguous(memory_format=torch.channels_last)
        # Back to one plane per class: the flip, the class shuffle and the warps read planes.
        out = net.residual(x).contiguous()
    if not mirror:
        return out[0]
    back = out[1].flip(-1)[torch.from_numpy(table.astype(np.int64))]
    return (out[0] + back) / 2


def logits_to_labels(
    logits: torch.Tensor,
    affine: np.ndarray,
    shape: tuple[int, int],
    prior: np.ndarray | None = None,
    prior_table: np.ndarray | None = None,
    prior_classes: tuple[int, ...] = (),
) -> np.ndarray:
    """(H, W) uint8 labels of an image from crop logits (19, S, S) resampled bilinearly through the
    affine (image -> crop), plus, when given, the prior's logits at the image's own resolution
    (prior_table[prior], sharper than the crop), arg-max. Outside the crop the prior's own labels
    (the rules reach further down the neck and out into the hair), or background without a prior.
    prior_classes (with a prior): these labels are the prior's, wherever the prior has them and only
    there (the arg-max runs over the other classes)."""
    height, width = shape
    size = logits.shape[-1]
    full = np.vstack([affine, [0.0, 0.0, 1.0]])
    corners = np.array([[0, 0], [size, 0], [0, size], [size, size]], np.float64) - 0.5
    back = (np.linalg.inv(full)[:2] @ np.hstack([corners, np.ones((4, 1))]).T).T
    left, top = np.clip(np.floor(back.min(axis=0)).astype(int), 0, [width, height])
    right, bottom = np.clip(np.ceil(back.max(axis=0)).astype(int) + 1, 0, [width, height])
    labels = np.zeros((height, width), np.uint8) if prior is None else prior.copy()
    if right - left < 1 or bottom - top < 1:
        return labels
    # Image pixel (x, y) of the region -> crop pixel: the affine shifted by the region's corner.
    roi_affine = affine.copy()
    roi_affine[:, 2] += affine[:, :2] @ np.array([left, top], np.float64)
    planes = logits.numpy()
    region = (int(right - left), int(bottom - top))
    prior_roi = None if prior is None else np.ascontiguousarray(prior[top:bottom, left:right])
    # One plane per class, warped straight into its slot (no (H, W, 19) copies), the prior's logit
    # added by a look-up on its labels, then the running arg-max (first class wins ties, as argmax).
    best = np.empty((region[1], region[0]), np.float32)
    plane = np.empty_like(best)
    refined = np.zeros(best.shape, np.uint8)
    skip = set(prior_classes) if prior_roi is not None else set()
    for cls in range(planes.shape[0]):
        if cls in skip:
            continue
        target = best if cls == 0 else plane
        # Outside the crop the background logit is huge, so that what the crop does not cover stays 0.
        cv2.warpAffine(
            np.ascontiguousarray(planes[cls]),
            roi_affine,
            region,
            dst=target,
            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=1e4 if cls == 0 else 0.0,
        )
        if prior_roi is not None and prior_table is not None:
            lut = np.zeros(256, np.float32)
            lut[: len(prior_table)] = prior_table[:, cls]
            target += cv2.LUT(prior_roi, lut)
        if cls:
            wins = plane > best
            refined[wins] = cls
            np.maximum(best, plane, out=best)
    if prior is not None:
        covered = cv2.warpAffine(
            np.ones((size, size), np.float32),
            roi_affine,
            region,
            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_CONSTANT,
        )
        # Only where the crop covers the whole bilinear footprint: at its edge the huge background
        # border logit would draw a seam of background between the network's labels and the prior's.
        refined = np.where(covered > 0.999, refined, prior_roi)
        if skip:
            kept = np.isin(prior_roi, list(skip))
            refined[kept] = prior_roi[kept]
    labels[top:bottom, left:right] = refined
    return labels


def prepare_crop(
    rgb: np.ndarray, landmarks: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(affine image -> crop, crop RGB (S, S, 3) uint8, prior in the crop (S, S) uint8, prior at the
    image's resolution (H, W) uint8) of one face; the prior is the fast rule-based parse."""
    affine = crop_affine(landmarks)
    crop = warp_to_crop(rgb, affine)
    prior = parsing.parse_rules(rgb, np.asarray(landmarks, np.float64), fast=True)
    return affine, crop, warp_to_crop(prior, affine, nearest=True), prior


def refine_parse(
    rgb: np.ndarray, landmarks: np.ndarray, net: ParsingNet | None = None, mirror: bool = True
) -> np.ndarray:
    """19-class label map (H, W) uint8 of the face whose 68 landmarks are given, by prior + network
    (mirror: see crop_residual)."""
    net = default_net() if net is None else net
    affine, crop, crop_prior, prior = prepare_crop(rgb, landmarks)
    residual = crop_residual(net, crop, crop_prior, mirror)
    return logits_to_labels(residual, affine, rgb.shape[:2], prior, net.prior_table(), net.prior_classes())
