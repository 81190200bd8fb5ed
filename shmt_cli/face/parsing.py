"""Face parsing in CelebAMask-HQ label ids, built in (no weights), plus loading and remapping external maps.

The built-in parser (`parse_face`) works from dlib's 68 landmarks and the image, in three modules:
parsing_shapes.py draws the parts (lips, inner mouth, eyes, brows, nose) as landmark outlines in the
face frame, parsing_rules.py moves them by per-image colour evidence, parsing_skin.py grows the skin
region (GrabCut) with ears, neck and a coarse hair label. parsing_net.py refines a cheaper version of
that parse with a small network (method "net"; the default is "rules"). After either, parsing_parts.py
re-decides each eye, brow, the nose, the lips and each ear with a small network on a window around
their landmarks (parts=True).

Known limits: brows under thin bangs are still often called brow where the official maps call them
hair; eyes and brows whose landmarks are off by more than about a third of the part's window are not
found. Lips parted by a dark slit only are labelled by the slit's own pixels, which CelebAMask maps
often label differently (larger, smaller or not at all); mouths that are dark and barely open can be
missed.

Label ids (spec §1.2): 0 background, 1 skin, 2 nose, 3 eyeglasses, 4 l_eye, 5 r_eye, 6 l_brow,
7 r_brow, 8 l_ear, 9 r_ear, 10 inner mouth, 11 upper lip, 12 lower lip, 13 hair, 14 hat, 15 earring,
16 necklace, 17 neck, 18 cloth. "l_" is the subject's left, i.e. the IMAGE's right side.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from shmt_cli.face.labels import (
    HAIR,
    L_BROW,
    L_EAR,
    L_EYE,
    L_LIP,
    MOUTH,
    NECK,
    NOSE,
    NUM_LABELS,
    R_BROW,
    R_EAR,
    R_EYE,
    SKIN,
    U_LIP,
)
from shmt_cli.face.parsing_rules import brow_region, eye_region, mouth_regions, rgb_to_lab
from shmt_cli.face.parsing_shapes import Frame, catmull_rom, fill_polygon, nose_polygon
from shmt_cli.face.parsing_skin import (
    HAIR_PRIOR,
    WIDE_PRIOR,
    ear_zones,
    hair_region,
    skin_region,
)

# Faces with a larger interocular distance (px) are parsed at this size and the labels scaled back.
PARSE_MAX_INTEROCULAR = 160.0
# Window around a part's landmarks (interocular distances, plus 8 px for the blurs) where the part is
# refined: wider than its outline, search band and colour samples, so the result is the whole image's.
# The farthest reach is about 0.2: a brow's lower edge (0.12 below its points) plus its search band
# (0.08), an eye's band (0.09) plus the iris-sized pad of its eyeball box (0.07). (0.5 gave the same
# labels on the dev photos, for about 3 ms more per face.)
PART_WINDOW_PAD = 0.25


# ----------------------------------------------------------------------------------------------------------
# public API


PARSE_METHODS = ("net", "rules")


def parse_face(
    rgb: np.ndarray, landmarks: np.ndarray, method: str = "rules", parts: bool = True
) -> np.ndarray:
    """19-class CelebAMask-HQ label map (H, W) uint8 of the face whose 68 landmarks are given.

    rgb: (H, W, 3) uint8 RGB; landmarks: (68, 2) float (x, y) in dlib / iBUG 300-W order.
    method: "rules" (default) the rule-based parser (landmark outlines moved by colour, full
    GrabCut skin region with a skin Gaussian per half of the face and a full-resolution boundary
    pass); "net" the fast rules' parse (cheaper GrabCut, one skin Gaussian, no boundary pass)
    refined by the shipped network (shmt_cli/face/parsing_net.py), which leaves eyes and lips to the
    rules. In 3-fold held-out IoU on the dev photos (tools/parsing_train.py --kfold 3) the network is
    better on brows and nose, equal on eyes and lips, but lower on made-up faces' skin region (0.919
    against the rules' 0.924 on 256 px align crops) and open mouths, and its neck starts lower (a
    foundation step at the jaw, tests/test_classic_defects.py): so not the default, although it takes
    about 80 % of the time.
    parts: then re-decide eyes, brows, nose, lips and ears with the networks of
    shmt_cli/face/parsing_parts.py (the parts and settings its weights file names for the method).
    3-fold held out on top of the rules (tools/parsing_parts_train.py --kfold 3): made-up eyes 0.760
    -> 0.840, brows 0.695 -> 0.779, nose 0.845 -> 0.867, lips 0.879 (rules 0.870 in sample), open
    mouth 0.731 -> 0.736; bare eyes 0.858 -> 0.874, brows 0.767 -> 0.844, nose 0.881 -> 0.898, lips
    0.919 (0.912), open mouth 0.766 -> 0.784; the ears, M_face made-up 0.923 -> 0.925, bare 0.928 ->
    0.932 (on 256 px align crops 0.929 / 0.927 -> 0.931 / 0.931). parts=False gives the parse without
    them (the training data of that stage).
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError("parse_face expects an (H, W, 3) uint8 RGB image")
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.shape != (68, 2):
        raise ValueError(f"parse_face expects (68, 2) landmarks, got {lm.shape}")
    if method not in PARSE_METHODS:
        raise ValueError(f"unknown parse method {method!r}; expected one of {PARSE_METHODS}")
    if method == "net":
        # Imported here: torch is only needed when a network runs.
        from shmt_cli.face import parsing_net

        labels = parsing_net.refine_parse(rgb, lm)
    else:
        labels = parse_rules(rgb, lm)
    if parts:
        from shmt_cli.face import parsing_parts

        labels = parsing_parts.refine_parts(rgb, lm, labels, method)
    return labels


def parse_rules(rgb: np.ndarray, lm: np.ndarray, fast: bool = False) -> np.ndarray:
    """The rule-based parser on the whole image: (H, W) uint8 labels of rgb (H, W, 3) uint8 with (68, 2)
    float64 landmarks (checked by parse_face). fast: the cheaper skin region (parsing_skin FAST_*), the
    prior of the learned refinement."""
    height, width = rgb.shape[:2]
    labels = np.zeros((height, width), np.uint8)
    # Everything happens inside the region where face and hair may be, so the cost does not grow with
    # the photo's size; the rest stays background.
    frame = Frame(lm)
    reach = frame.to_image(np.concatenate([np.array(HAIR_PRIOR), np.array(WIDE_PRIOR)]))
    margin = 0.1 * frame.iod
    left, top = np.floor(reach.min(axis=0) - margin).astype(int)
    right, bottom = np.ceil(reach.max(axis=0) + margin).astype(int) + 1
    left, top, right, bottom = max(0, left), max(0, top), min(width, right), min(height, bottom)
    if right - left < 2 or bottom - top < 2:
        return labels
    roi = np.ascontiguousarray(rgb[top:bottom, left:right])
    roi_lm = lm - np.array([left, top])
    # Very large faces are parsed at a bounded size and the labels scaled back (nearest).
    factor = min(1.0, PARSE_MAX_INTEROCULAR / frame.iod)
    if factor < 1.0:
        roi_w, roi_h = right - left, bottom - top
        small_size = (max(2, round(roi_w * factor)), max(2, round(roi_h * factor)))
        small = cv2.resize(roi, small_size, interpolation=cv2.INTER_AREA)
        scaled_lm = (roi_lm + 0.5) * np.array([small_size[0] / roi_w, small_size[1] / roi_h]) - 0.5
        small_labels = _parse_roi(small, scaled_lm, fast)
        labels[top:bottom, left:right] = cv2.resize(
            small_labels, (roi_w, roi_h), interpolation=cv2.INTER_NEAREST
        )
    else:
        labels[top:bottom, left:right] = _parse_roi(roi, roi_lm, fast)
    return labels


def _parse_roi(rgb: np.ndarray, lm: np.ndarray, fast: bool) -> np.ndarray:
    """The rule-based parser on an image cropped around the face (landmarks in the crop's pixels)."""
    shape = rgb.shape[:2]
    frame = Frame(lm)
    iod = frame.iod

    labels = np.zeros(shape, np.uint8)
    face = skin_region(rgb, frame, fast)
    labels[hair_region(rgb, face, frame)] = HAIR
    labels[face] = SKIN

    # Neck: face pixels below the jaw line. Ears: face pixels beside the jaw, between brow and jaw.
    jaw = catmull_rom(lm[0:17], closed=False)
    far = 10.0 * iod
    below_jaw = fill_polygon(shape, np.concatenate([jaw, [lm[16] + far * frame.v, lm[0] + far * frame.v]]))
    labels[face & below_jaw] = NECK
    beside = ear_zones(shape, frame, jaw)
    labels[face & beside[0] & ~below_jaw] = R_EAR
    labels[face & beside[1] & ~below_jaw] = L_EAR

    labels[fill_polygon(shape, nose_polygon(frame))] = NOSE
    # Each part is refined inside a window around its landmarks (all its evidence lies within a
    # fraction of the interocular distance), which costs a fraction of the whole region's pixels.
    pad = PART_WINDOW_PAD * iod + 8
    # CIELAB once for the box around all part windows (the float conversion is costly per pixel and
    # the brow and eye windows overlap; it is per pixel, so a window's values are the same).
    box_rows, box_cols, _ = _part_window(shape, lm[17:68], pad)
    box_lab = rgb_to_lab(rgb[box_rows, box_cols])

    def window_lab(rows: slice, cols: slice) -> np.ndarray:
        height, width = rows.stop - rows.start, cols.stop - cols.start
        if height <= 0 or width <= 0:
            # A part outside the image: its window is empty (and may lie outside the box).
            return np.zeros((max(height, 0), max(width, 0), 3), np.float32)
        top, left = rows.start - box_rows.start, cols.start - box_cols.start
        return box_lab[top : top + height, left : left + width]

    for part, label, inner_first in (
        (slice(17, 22), R_BROW, False),
        (slice(22, 27), L_BROW, True),
        (slice(36, 42), R_EYE, None),
        (slice(42, 48), L_EYE, None),
    ):
        rows, cols, offset = _part_window(shape, lm[part], pad)
        sub_lm = lm - offset
        lab = window_lab(rows, cols)
        if inner_first is None:
            mask = eye_region(lab, sub_lm[part], Frame(sub_lm))
        else:
            mask = brow_region(lab, sub_lm[part], Frame(sub_lm), inner_first=inner_first)
        labels[rows, cols][mask] = label
    rows, cols, offset = _part_window(shape, lm[48:68], pad)
    upper, lower, mouth = mouth_regions(window_lab(rows, cols), lm - offset, iod)
    window = labels[rows, cols]
    window[upper] = U_LIP
    window[lower] = L_LIP
    window[mouth] = MOUTH
    return labels


def _part_window(shape: tuple[int, int], points: np.ndarray, pad: float) -> tuple[slice, slice, np.ndarray]:
    """Row and column slices of the (H, W) image around (K, 2) points grown by pad px, and the window's
    top-left corner (x, y) as float64 (integers, so that shifted outlines round as before)."""
    left, top = np.maximum(np.floor(points.min(axis=0) - pad).astype(int), 0)
    right, bottom = np.ceil(points.max(axis=0) + pad).astype(int) + 1
    right, bottom = min(int(right), shape[1]), min(int(bottom), shape[0])
    left, top = min(int(left), right), min(int(top), bottom)
    return slice(top, bottom), slice(left, right), np.array([left, top], np.float64)


# ----------------------------------------------------------------------------------------------------------
# external label maps

# zllrunning BiSeNet (face-parsing.PyTorch) order -> CelebAMask ids (spec §7).
_BISENET_TO_CELEBAMASK = np.array(
    [0, 1, 6, 7, 4, 5, 3, 8, 9, 15, 2, 10, 11, 12, 17, 16, 18, 13, 14], np.uint8
)
# MT (BeautyGAN) dataset order, as stated for the MT-Dataset parsing maps in
# github.com/makeuptransfer/SCGAN issue #20: 0 background, 1 skin, 2 left_brow, 3 right_brow,
# 4 left_eye, 5 right_eye, 6 nose, 7 up_lip, 8 teeth, 9 down_lip, 10 hair, 11 left_ear, 12 right_ear,
# 13 neck. ASSUMPTION: MT's "left" uses the same (subject's left) convention as CelebAMask's "l_".
_MT_TO_CELEBAMASK = np.array([0, 1, 6, 7, 4, 5, 2, 11, 10, 12, 13, 8, 9, 17], np.uint8)

LABEL_ORDERS: dict[str, np.ndarray] = {
    "celebamask": np.arange(NUM_LABELS, dtype=np.uint8),
    "bisenet": _BISENET_TO_CELEBAMASK,
    "mt": _MT_TO_CELEBAMASK,
}


def remap_labels(labels: np.ndarray, order: str) -> np.ndarray:
    """Map an integer label map from `order` ('celebamask', 'bisenet', 'mt') to CelebAMask ids (uint8).

    Raises ValueError for an unknown order or a value that the order does not define.
    """
    if order not in LABEL_ORDERS:
        raise ValueError(f"unknown label order {order!r}; expected one of {sorted(LABEL_ORDERS)}")
    table = LABEL_ORDERS[order]
    arr = np.asarray(labels)
    if arr.size and (arr.min() < 0 or arr.max() >= len(table)):
        raise ValueError(
            f"label values must lie in 0..{len(table) - 1} for order {order!r}, "
            f"found {arr.min()}..{arr.max()}"
        )
    return table[arr.astype(np.intp)]


def load_label_map(path: str | Path, size: tuple[int, int] | int, order: str = "celebamask") -> np.ndarray:
    """Read a PNG label map, resize it (nearest) to `size` = (height, width) or a side, remap to CelebAMask.

    Accepts 8-bit 1-channel maps (grey or palette: the palette indices are the labels) and 3-channel
    maps whose channels are identical. Raises ValueError naming the file for anything else
    (unreadable file, other channel counts or bit depths, differing channels, values out of range).
    """
    path = Path(path)
    try:
        with Image.open(path) as image:
            mode = image.mode
            raw = np.array(image)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: cannot read as an image ({exc})") from exc
    if mode not in ("L", "P", "RGB"):
        channels = {"LA": 2, "PA": 2, "RGBA": 4, "CMYK": 4}.get(mode)
        if channels is not None:
            raise ValueError(f"{path}: label map must have 1 or 3 channels, got {channels} (mode {mode})")
        raise ValueError(f"{path}: label map must be 8-bit with 1 or 3 channels, got mode {mode}")
    if raw.ndim == 3:
        if not (np.array_equal(raw[..., 0], raw[..., 1]) and np.array_equal(raw[..., 0], raw[..., 2])):
            raise ValueError(
                f"{path}: 3-channel label map has channels that differ (a colour visualisation?)"
            )
        raw = raw[..., 0]
    height, width = (size, size) if isinstance(size, int) else size
    if raw.shape != (height, width):
        raw = cv2.resize(raw, (width, height), interpolation=cv2.INTER_NEAREST)
    try:
        return remap_labels(raw, order)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc
