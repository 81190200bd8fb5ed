"""SHMT input representations, exact to the official code (spec §1.3, §1.4, §1.6, §1.7, §1.8).

From a source photo (image, parsing labels, 3D render) and a reference photo (image, labels) this builds
everything the SHMT denoiser and IDA consume: background, gray face, texture detail, content tensor,
makeup representation, masks and one-hots, at 256² and on the 64² latent grid.

Order of operations matters for checkpoint parity: masked images are formed in uint8 *before* the
[-1, 1] normalisation (so masked-out pixels become exactly -1), and the gray face uses OpenCV's BGR->gray
weights on RGB data, with OpenCV's fixed-point rounding.

Array conventions: numpy inputs are channels-last, images (H, W, 3) or (B, H, W, 3) uint8 and label maps
(H, W) or (B, H, W) uint8; torch inputs are NCHW, images (B, 3, H, W) and labels (B, 1, H, W) uint8.
Outputs are torch NCHW: uint8 for the 0..255 stage, float32 for everything after normalisation.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from shmt_cli.face.labels import FACE_LABELS, NECK_EARS_LABELS, NUM_LABELS
from shmt_cli.pyramid import laplacian_pyramid

IMAGE_SIZE = 256
# VQ-f4 latents: the 64² grid of a 256² image.
LATENT_FACTOR = 4
DETAIL_LEVELS = (0, 1, 2, 3, 4)

# OpenCV's 8-bit RGB->gray coefficients (15-bit fixed point, sum 32768) for B, G, R in that order; SHMT
# hands RGB data to COLOR_BGR2GRAY, so the first weight lands on R.
_CV_GRAY_WEIGHTS_BGR = (3735, 19235, 9798)
_CV_GRAY_SHIFT = 15

ArrayLike = np.ndarray | torch.Tensor


# ----------------------------------------------------------------------------------------------------
# Test-time geometry (§1.6), on numpy arrays as decoded from files.


def resize_inputs(
    image_rgb: np.ndarray,
    labels: np.ndarray,
    render: np.ndarray | None = None,
    size: int = IMAGE_SIZE,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Official test-time resize of one photo to size x size (aspect ratio not kept).

    image_rgb: (H, W, 3) uint8 RGB. labels: (h, w) uint8 parsing ids (any size, usually 512²; read
    label PNGs as single-channel, e.g. cv2.IMREAD_GRAYSCALE). render: optional (H, W, 3) uint8 3D render,
    pixel-aligned with the image; its channel order is kept as given (the official code keeps OpenCV's
    BGR, harmless because renders are gray). Image and render are stacked into one 6-channel array and
    resized with INTER_LINEAR, exactly as the official loader does; labels use INTER_NEAREST.
    Returns (image (size, size, 3), labels (size, size), render (size, size, 3) or None), all uint8.
    """
    _check_hwc_u8(image_rgb, "image_rgb")
    if labels.ndim != 2 or labels.dtype != np.uint8:
        raise ValueError(f"labels must be an (H, W) uint8 array, got {labels.shape} {labels.dtype}")
    target = (size, size)  # cv2 wants (width, height)
    if render is None:
        image = cv2.resize(np.ascontiguousarray(image_rgb), target, interpolation=cv2.INTER_LINEAR)
        resized_render = None
    else:
        _check_hwc_u8(render, "render")
        if render.shape != image_rgb.shape:
            raise ValueError(f"render {render.shape} must match the image {image_rgb.shape}")
        stacked = np.ascontiguousarray(np.concatenate([image_rgb, render], axis=2))
        both = cv2.resize(stacked, target, interpolation=cv2.INTER_LINEAR)
        image, resized_render = np.ascontiguousarray(both[..., :3]), np.ascontiguousarray(both[..., 3:])
    resized_labels = cv2.resize(np.ascontiguousarray(labels), target, interpolation=cv2.INTER_NEAREST)
    return image, resized_labels, resized_render


# ----------------------------------------------------------------------------------------------------
# Conversion to batched NCHW uint8 tensors.


def image_batch(image: ArrayLike, device: torch.device | str | None = None) -> torch.Tensor:
    """(H, W, 3) / (B, H, W, 3) numpy or (B, 3, H, W) torch uint8 -> (B, 3, H, W) uint8 tensor."""
    if isinstance(image, np.ndarray):
        if image.ndim == 3:
            image = image[None]
        if image.ndim != 4 or image.shape[-1] != 3:
            raise ValueError(f"expected (H, W, 3) or (B, H, W, 3), got {image.shape}")
        image = torch.from_numpy(np.ascontiguousarray(image)).permute(0, 3, 1, 2)
    elif image.dim() != 4 or image.shape[1] != 3:
        raise ValueError(f"expected a (B, 3, H, W) tensor, got {tuple(image.shape)}")
    return _as_u8(image, "image").to(device)


def label_batch(labels: ArrayLike, device: torch.device | str | None = None) -> torch.Tensor:
    """(H, W) / (B, H, W) numpy or (B, 1, H, W) torch uint8 ids -> (B, 1, H, W) uint8 tensor."""
    if isinstance(labels, np.ndarray):
        if labels.ndim == 2:
            labels = labels[None]
        if labels.ndim != 3:
            raise ValueError(f"expected (H, W) or (B, H, W) labels, got {labels.shape}")
        labels = torch.from_numpy(np.ascontiguousarray(labels))[:, None]
    elif labels.dim() != 4 or labels.shape[1] != 1:
        raise ValueError(f"expected a (B, 1, H, W) tensor, got {tuple(labels.shape)}")
    return _as_u8(labels, "labels").to(device)


# ----------------------------------------------------------------------------------------------------
# uint8 stage (§1.2, §1.3, §1.4).


def face_mask(labels: ArrayLike) -> ArrayLike:
    """M_face: 1 where the label is in FACE_LABELS, else 0; uint8, same type and shape as labels."""
    return _label_mask(labels, FACE_LABELS)


def neck_ears_mask(labels: ArrayLike) -> ArrayLike:
    """1 on ears and neck (labels 8, 9, 17), else 0; uint8. Official loaders emit it; SHMT never uses it."""
    return _label_mask(labels, NECK_EARS_LABELS)


def apply_mask(image_u8: torch.Tensor, mask_u8: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) uint8 image times a (B, 1, H, W) {0, 1} uint8 mask, still uint8 (zeros outside)."""
    return image_u8 * mask_u8


def background(image_u8: torch.Tensor, mask_u8: torch.Tensor) -> torch.Tensor:
    """I_bg = I ⊙ (1 - M_face): (B, 3, H, W) uint8, black on the face."""
    return image_u8 * (1 - mask_u8)


def makeup_representation(image_u8: torch.Tensor, mask_u8: torch.Tensor) -> torch.Tensor:
    """I_m = R ⊙ M_face(S_R): the reference's face only, (B, 3, H, W) uint8, black elsewhere."""
    return apply_mask(image_u8, mask_u8)


def gray_bgr_quirk(image_u8: torch.Tensor) -> torch.Tensor:
    """OpenCV COLOR_BGR2GRAY applied to RGB data: Y ≈ 0.114 R + 0.587 G + 0.299 B.

    (B, 3, H, W) uint8 RGB -> (B, 1, H, W) uint8, bit-identical to cv2.cvtColor (fixed-point rounding).
    The R/B swap is an official quirk kept for checkpoint parity.
    """
    wide = image_u8.to(torch.int32)
    weights = torch.tensor(_CV_GRAY_WEIGHTS_BGR, dtype=torch.int32, device=image_u8.device).view(1, 3, 1, 1)
    total = (wide * weights).sum(dim=1, keepdim=True) + (1 << (_CV_GRAY_SHIFT - 1))
    return (total >> _CV_GRAY_SHIFT).to(torch.uint8)


def gray_face(image_u8: torch.Tensor, mask_u8: torch.Tensor) -> torch.Tensor:
    """G before normalisation: gray_bgr_quirk(I ⊙ M_face), (B, 1, H, W) uint8 (0 off the face)."""
    return gray_bgr_quirk(apply_mask(image_u8, mask_u8))


# ----------------------------------------------------------------------------------------------------
# Float stage.


def to_unit_range(image_u8: torch.Tensor) -> torch.Tensor:
    """uint8 0..255 -> float32 [-1, 1] as torchvision ToTensor + Normalize(0.5, 0.5) (same rounding)."""
    return (image_u8.to(torch.float32) / 255.0 - 0.5) / 0.5


def one_hot(labels: torch.Tensor, num_classes: int = NUM_LABELS) -> torch.Tensor:
    """P(S): (B, 1, H, W) integer ids -> (B, num_classes, H, W) float32 {0, 1}; unknown ids are all-zero."""
    classes = torch.arange(num_classes, device=labels.device).view(1, num_classes, 1, 1)
    return (labels.to(torch.int64) == classes).to(torch.float32)


def unshuffle4(x: torch.Tensor) -> torch.Tensor:
    """Pixel-unshuffle by 4: (B, C, H, W) -> (B, 16C, H/4, W/4).

    Output channel c·16 + 4a + b at (y, x) holds input pixel (c, 4y + a, 4x + b).
    """
    return F.pixel_unshuffle(x, LATENT_FACTOR)


def mask_64(mask: torch.Tensor) -> torch.Tensor:
    """M64: bilinear (align_corners False, no antialias) resize of a (B, 1, H, W) mask to (H/4, W/4).

    float32; at 256 -> 64 each value is the mean of the central 2x2 of its 4x4 block, in {0, .25, .5, .75, 1}.
    """
    size = _latent_size(mask)
    return F.interpolate(mask.to(torch.float32), size=size, mode="bilinear", align_corners=False)


def onehot_64(onehot: torch.Tensor) -> torch.Tensor:
    """Nearest resize of (B, K, H, W) one-hots to (H/4, W/4): keeps pixel (4y, 4x), as IDA does."""
    return F.interpolate(onehot, size=_latent_size(onehot), mode="nearest")


def band_to_64(band: torch.Tensor, level: int, size: tuple[int, int] | None = None) -> torch.Tensor:
    """Map Laplacian band h_level of a (B, 1, H, W) image onto the (H/4, W/4) latent grid (§1.7).

    level 0: unshuffle by 4 (16 ch); 1: unshuffle by 2 (4 ch); 2: as is (1 ch); 3 and 4: nearest
    upsampling (1 ch; at 256², each h4 value fills a 4x4 block). ``size`` is the latent grid for
    levels 3 and 4 (default: the band's size times 2 or 4; pass (H/4, W/4) when H/16 is not whole).
    """
    if level == 0:
        return F.pixel_unshuffle(band, 4)
    if level == 1:
        return F.pixel_unshuffle(band, 2)
    if level == 2:
        return band
    if level in (3, 4):
        if size is None:
            scale = 2 ** (level - 2)
            size = (band.shape[-2] * scale, band.shape[-1] * scale)
        return F.interpolate(band, size=size, mode="nearest")
    raise ValueError(f"texture-detail level must be one of {DETAIL_LEVELS}, got {level}")


def detail_channels(level: int) -> int:
    """Channels of the mapped texture detail for a level: 16, 4, 1, 1, 1 for levels 0..4."""
    return {0: 16, 1: 4, 2: 1, 3: 1, 4: 1}[level]


def detail_64(gray: torch.Tensor, level: int, scale: float = 1.0) -> torch.Tensor:
    """Texture detail h: band ``level`` of the [-1, 1] gray face (B, 1, H, W), mapped to (H/4, W/4).

    ``scale`` is the training-time amplitude jitter s (1 at inference). float, see ``band_to_64``.
    """
    bands = laplacian_pyramid(gray, level + 1)
    return band_to_64(scale * bands[level], level, _latent_size(gray))


def content_tensor(detail: torch.Tensor, render: torch.Tensor) -> torch.Tensor:
    """C = cat[detail, unshuffle4(render)]: (B, k, H/4, W/4) and (B, 3, H, W) -> (B, k + 48, H/4, W/4).

    The render is the [-1, 1] 3D render; k is 16 for SHMT-h0 (total 64) and 1 for SHMT-h4 (total 49).
    """
    return torch.cat([detail, unshuffle4(render)], dim=1)


# ----------------------------------------------------------------------------------------------------
# Bundles for the engines.


@dataclass(frozen=True)
class SourceParts:
    """Everything SHMT reads from the source photo; B-batched, H = W = 256 for the official models.

    uint8 (B, C, H, W) 0..255 (previews): image_u8 (RGB), render_u8, labels (ids), face_mask_u8 and
    neck_ears_mask_u8 ({0, 1}), bg_u8 (I_bg), gray_u8 (G).
    float32: bg (B, 3, H, W) and render (B, 3, H, W) and gray (B, 1, H, W) in [-1, 1];
    face_mask (B, 1, H, W) {0, 1}; onehot (B, 19, H, W) {0, 1}; mask64 (B, 1, H/4, W/4) in [0, 1];
    onehot64 (B, 19, H/4, W/4); bands = Laplacian pyramid of gray up to max(levels) plus residual;
    details[level] (B, 16 | 4 | 1, H/4, W/4); content[level] = C = cat[details[level], unshuffle4(render)].
    """

    image_u8: torch.Tensor
    render_u8: torch.Tensor
    labels: torch.Tensor
    face_mask_u8: torch.Tensor
    neck_ears_mask_u8: torch.Tensor
    bg_u8: torch.Tensor
    gray_u8: torch.Tensor
    bg: torch.Tensor
    gray: torch.Tensor
    render: torch.Tensor
    face_mask: torch.Tensor
    onehot: torch.Tensor
    mask64: torch.Tensor
    onehot64: torch.Tensor
    bands: list[torch.Tensor]
    details: dict[int, torch.Tensor]
    content: dict[int, torch.Tensor]

    @property
    def image(self) -> torch.Tensor:
        """The full source image in [-1, 1], (B, 3, H, W) float32 (only for output grids)."""
        return to_unit_range(self.image_u8)


@dataclass(frozen=True)
class ReferenceParts:
    """Everything SHMT reads from the reference photo; B-batched.

    uint8: image_u8 (B, 3, H, W) RGB, labels (B, 1, H, W), face_mask_u8 (B, 1, H, W), makeup_u8 (I_m).
    float32: makeup (B, 3, H, W) [-1, 1] (VQ-encoded to z_ref); makeup64 = U_m = unshuffle4(makeup)
    (B, 48, H/4, W/4); onehot (B, 19, H, W); onehot64 (B, 19, H/4, W/4).
    """

    image_u8: torch.Tensor
    labels: torch.Tensor
    face_mask_u8: torch.Tensor
    makeup_u8: torch.Tensor
    makeup: torch.Tensor
    makeup64: torch.Tensor
    onehot: torch.Tensor
    onehot64: torch.Tensor

    @property
    def image(self) -> torch.Tensor:
        """The full reference image in [-1, 1], (B, 3, H, W) float32 (only for output grids)."""
        return to_unit_range(self.image_u8)


def source_parts(
    image_rgb: ArrayLike,
    labels: ArrayLike,
    render: ArrayLike,
    levels: Iterable[int] = (0, 4),
    *,
    detail_scale: float = 1.0,
    device: torch.device | str | None = None,
) -> SourceParts:
    """Source representations from an already resized image, label map and 3D render (see module doc).

    Sides must be multiples of 4 (256 for the official models). ``levels``: texture-detail levels to
    build (0 for SHMT-h0, 4 for SHMT-h4); ``detail_scale``: training amplitude jitter (1 at inference).
    """
    wanted = sorted(set(levels))
    if not wanted or any(level not in DETAIL_LEVELS for level in wanted):
        raise ValueError(f"levels must be a non-empty subset of {DETAIL_LEVELS}, got {levels}")
    image_u8 = image_batch(image_rgb, device)
    render_u8 = image_batch(render, image_u8.device)
    label_u8 = label_batch(labels, image_u8.device)
    _check_same_geometry(image_u8, render_u8, label_u8)

    mask_u8 = face_mask(label_u8)
    bg_u8 = background(image_u8, mask_u8)
    gray_u8 = gray_face(image_u8, mask_u8)
    gray = to_unit_range(gray_u8)
    render_unit = to_unit_range(render_u8)
    onehot = one_hot(label_u8)

    # One pyramid serves every level: its bands do not depend on how many levels are built.
    bands = laplacian_pyramid(gray, max(wanted) + 1)
    grid = _latent_size(gray)
    details = {level: band_to_64(detail_scale * bands[level], level, grid) for level in wanted}
    content = {level: content_tensor(detail, render_unit) for level, detail in details.items()}
    return SourceParts(
        image_u8=image_u8,
        render_u8=render_u8,
        labels=label_u8,
        face_mask_u8=mask_u8,
        neck_ears_mask_u8=neck_ears_mask(label_u8),
        bg_u8=bg_u8,
        gray_u8=gray_u8,
        bg=to_unit_range(bg_u8),
        gray=gray,
        render=render_unit,
        face_mask=mask_u8.to(torch.float32),
        onehot=onehot,
        mask64=mask_64(mask_u8),
        onehot64=onehot_64(onehot),
        bands=bands,
        details=details,
        content=content,
    )


def reference_parts(
    image_rgb: ArrayLike, labels: ArrayLike, *, device: torch.device | str | None = None
) -> ReferenceParts:
    """Reference representations from an already resized image and label map (sides multiples of 4)."""
    image_u8 = image_batch(image_rgb, device)
    label_u8 = label_batch(labels, image_u8.device)
    _check_same_geometry(image_u8, label_u8)
    mask_u8 = face_mask(label_u8)
    makeup_u8 = makeup_representation(image_u8, mask_u8)
    makeup = to_unit_range(makeup_u8)
    onehot = one_hot(label_u8)
    return ReferenceParts(
        image_u8=image_u8,
        labels=label_u8,
        face_mask_u8=mask_u8,
        makeup_u8=makeup_u8,
        makeup=makeup,
        makeup64=unshuffle4(makeup),
        onehot=onehot,
        onehot64=onehot_64(onehot),
    )


# ----------------------------------------------------------------------------------------------------
# Helpers.


def _label_mask(labels: ArrayLike, ids: tuple[int, ...]) -> ArrayLike:
    if isinstance(labels, np.ndarray):
        return np.isin(labels, ids).astype(np.uint8)
    wanted = torch.tensor(ids, dtype=labels.dtype, device=labels.device)
    return torch.isin(labels, wanted).to(torch.uint8)


def _latent_size(x: torch.Tensor) -> tuple[int, int]:
    height, width = x.shape[-2:]
    if height % LATENT_FACTOR or width % LATENT_FACTOR:
        raise ValueError(f"H and W must be multiples of {LATENT_FACTOR}, got {height}x{width}")
    return height // LATENT_FACTOR, width // LATENT_FACTOR


def _check_same_geometry(*tensors: torch.Tensor) -> None:
    batch, height, width = tensors[0].shape[0], *tensors[0].shape[-2:]
    for tensor in tensors[1:]:
        if (tensor.shape[0], *tensor.shape[-2:]) != (batch, height, width):
            raise ValueError(f"batch/size mismatch: {tuple(tensors[0].shape)} vs {tuple(tensor.shape)}")
    if height % LATENT_FACTOR or width % LATENT_FACTOR:
        raise ValueError(f"H and W must be multiples of {LATENT_FACTOR}, got {height}x{width}")


def _as_u8(x: torch.Tensor, name: str) -> torch.Tensor:
    if x.dtype != torch.uint8:
        raise ValueError(f"{name} must be uint8, got {x.dtype}")
    return x


def _check_hwc_u8(x: np.ndarray, name: str) -> None:
    if x.ndim != 3 or x.shape[-1] != 3 or x.dtype != np.uint8:
        raise ValueError(f"{name} must be an (H, W, 3) uint8 array, got {x.shape} {x.dtype}")
