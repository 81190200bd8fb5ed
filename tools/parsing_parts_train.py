"""Train the eye, brow, nose, lips and ear networks of shmt_cli/face/parsing_parts.py; measure them by k-fold.

Data: the 36 dev photos of ../shared/faces (*/images; 21 made-up, 15 bare; CC BY-NC-SA 4.0, see its
README) with the official parser's maps (*/seg, the FaceParsing.PyTorch BiSeNet that SHMT uses,
CelebAMask-HQ ids); landmarks from the project's dlib detector; the prior channel is the rule-based
parse (parse_face method "rules") of the photo. Each photo gives eight samples (two eyes, two brows,
two ears, the image-right ones mirrored; the nose and the lips (upper + lower as one part), flipped at
random) in the patch windows of parsing_parts.patch_affine.
Objective: per part kind, binary cross-entropy plus soft Dice between the network's logits and the
official map's mask of that part (bilinear from the 512 px map: soft at its edges), with heavy
augmentation: the window shifted, scaled and turned (dlib's points off the part, far now and then),
the prior mask dropped (PRIOR_DROP) or shifted on its own, colour jitter (hue, saturation, contrast,
gamma, blur, noise, low resolution), eyeliner rings and wings, eye shadow, drawn lashes and white
lines around the eyes; costume brows (the brow blocked out with skin-coloured paste, another drawn
higher up, which the target follows), brows of any colour or faded to the skin, shadow up to the brow,
glitter and gems around it, drawn brow strokes, and thick or thin bangs of any hair colour over the brows
(the target becomes "not brow" where they cover it densely, as the official parser calls it hair);
contour and highlight strokes
along the nose (within the target's own length), lipstick of any colour (black, blue, nude...),
glitter, gloss, liner on a grown or shrunk lip outline, and opened mouths (teeth and a dark gap painted
over the lips' middle, which the target then calls not lip); locks of hair over the ears (the target is
not ear where they cover it densely).
Then, per parse method and part kind, whether the stage decides it and with which logit bias and
prior weight (parsing_parts.apply_logits; BIASES x PRIOR_WEIGHTS): the setting with the highest
(made-up mean IoU + bare mean IoU) / 2 of that part (the ears: of M_face, JUDGED_BY) over the k-fold's
held-out photos, or none when the parse without the stage scores higher. Every fitted value is in the
weights file this script writes (float16 safetensors, keys '<kind>.<parameter>'; the settings in its
metadata).

    python tools/parsing_parts_train.py --kfold 3 --fold-dir DIR --out shmt_cli/face/parsing_parts.safetensors

--kfold K trains K sets of networks, each on all photos but one stratified fold (the folds of
tools/parsing_train.py), and prints per-class held-out IoU for made-up and bare photos: the rules and
the net parse as they are, with this stage at bias 0 and no prior weight, and with the settings chosen
on the other folds' photos (nested, so the figures stay held out). With --fold-dir each fold's weights
are written there with their nested settings (tests/data/parsing_parts_fold0.safetensors is fold 0).
--aligned N scores the held-out photos on their N px `shmt align` crops (the official map warped the
same way), where the pipeline parses them and the issue's checker measures; the settings are then chosen
there too. --train-aligned N[,N...] adds each training photo's N px align crops to the training photos
(the official map warped the same way, the prior channel the rules' parse of the crop): the crop's face
is smaller (interocular distance ~77 px at 256 against ~100 in the photos) and its resampling blurs it.
--out then trains on all photos and ships the settings chosen on all held-out photos. The shipped
weights: 1500 steps (the lips network 1000 with the 224 and 256 px crops added: --retrain lips
--steps 1000 --train-aligned 224,256), batch 16, the defaults below, the settings chosen at the photos' own
size (--out without --aligned: chosen on the crops, the eyes', brows' and nose's move and classic
content falls by 0.001); the folds can be trained in parallel processes (--only-fold F, --only-fold all)
and then scored and shipped with --reuse. --reuse --retrain nose trains only the named kinds and reads
the others from --fold-dir (how the nose and lips networks were added: the other networks stayed
byte-identical; kind i of parsing_parts.KINDS has seed + i, so a retrained kind gets the seed a full run
would give it).
Training is deterministic (fixed seeds, single-process data generation): the same command writes the
same tensors (the safetensors header may list the metadata in another order). Caveat: the rules' ~67
constants were fitted on all 36 photos and the "net" rows use the shipped parsing_net weights, which saw
them too: only this stage is held out.
The lips' crops (3-fold held out, rules + chosen, made-up / bare lips on 256 px crops; at the photos'
own size): photos only 0.870 / 0.908 (0.879 / 0.919); --train-aligned 256 0.870 / 0.913 (0.876 /
0.921); --train-aligned 224,256 0.875 / 0.914 (0.878 / 0.922), chosen lips bias 0.5, prior weight 1 on
every fold's crops.
The ears (--reuse --retrain ears --steps 1000 --train-aligned 224,256; the other networks byte-identical),
3-fold held out on 256 px crops, rules + chosen, made-up / bare M_face 0.929 / 0.927 -> 0.931 / 0.931
(ears IoU over the photos that have them 0.215 / 0.125 -> 0.397 / 0.374); at the photos' own size
M_face 0.923 / 0.928 -> 0.925 / 0.932. Shipped: ears bias 0, prior weight 1 after the rules.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from safetensors.torch import save_file
from torch.nn import functional as F

from shmt_cli.atomic import atomic_path
from shmt_cli.face import parsing_parts as pp
from shmt_cli.face.labels import U_LIP
from shmt_cli.face.parsing import load_label_map, parse_face
from shmt_cli.face.parsing_shapes import Frame, disk

sys.path.insert(0, str(Path(__file__).resolve().parent))
import parsing_iou
from parsing_train import fit, folds, half_state, print_table, score

FACES = Path(__file__).resolve().parents[2] / "shared" / "faces"

# Probability that the prior mask is left out of a sample (the network must find the part itself),
# and that a kept prior is shifted on its own (the rules' outline off the part).
# 0.3 (1500 steps) against 0.5 (1000 steps), 3-fold held out with chosen settings: made-up eyes / brows
# 0.840 / 0.749 against 0.826 / 0.735, bare 0.874 / 0.839 against 0.873 / 0.816.
PRIOR_DROP = 0.3
PRIOR_SHIFT = 0.5
# Probability of bangs painted over a brow sample (the target is not brow under them). 0.5 was worse
# held out (made-up / bare brows 0.734 / 0.834 against 0.749 / 0.839 with chosen settings; measured with
# the earlier brow recipe: thick bangs only, the shorter window).
BANGS = 0.25
# Probability of a costume brow sample: the brow blocked out with skin-coloured paste and another drawn
# 0.15-0.45 of the window's height above it (the target follows the drawn brow, as on 21018).
# The brow recipe (this, the taller window, colour / fade / shadow / glitter / thin bangs), 3-fold held
# out with chosen settings: made-up / bare brows 0.779 / 0.844 against 0.749 / 0.839 before. Rejected:
# 2500 steps (0.783 / 0.842), a faint veil of wisps as bangs plus photos scaled down to 0.55-1.0 before
# sampling (0.775 / 0.845; on 256 px align crops 0.770 / 0.840 against 0.773 / 0.841 without). The
# augmentation with the earlier, shorter brow window: 0.772 / 0.846 (21018 0.64 against 0.78).
BLOCK_OUT = 0.1
# Probability of a lock of hair painted over an ear sample (paint_ear).
EAR_HAIR = 0.25
# Window jitter (iod): standard deviation of the shift, and of a far shift with probability FAR.
SHIFT = 0.03
FAR_SHIFT = 0.09
FAR = 0.25
# Parse methods the stage may follow, and the logit biases tried when choosing per kind.
BASES = ("rules", "net")
BIASES = (-1.0, -0.5, 0.0, 0.5, 1.0)
PRIOR_WEIGHTS = (0.0, 1.0, 2.0, 4.0)
Setting = tuple[float, float]  # (bias, prior weight) of parsing_parts.apply_logits
# The region of parsing_iou.REGIONS by which a kind's setting is chosen, when not its own: the ears are
# there for M_face (many photos have none, and the ears' own IoU cannot see a false ear on those).
JUDGED_BY = {"ears": "M_face"}


@dataclass
class Item:
    name: str
    rgb: np.ndarray  # (H, W, 3) uint8
    landmarks: np.ndarray  # (68, 2)
    ref: np.ndarray  # (512, 512) uint8 official map (an align crop's: warped, its size)
    rules: np.ndarray  # (H, W) uint8 parse_face(method="rules")
    net: np.ndarray  # (H, W) uint8 parse_face(method="net")


ITEM_ARRAYS = ("rgb", "landmarks", "ref", "rules", "net")


def write_items(path: Path, items: list[Item]) -> None:
    """The loaded photos as one .npz of plain arrays (read back without unpickling anything)."""
    arrays = {
        f"{index}.{field}": getattr(item, field) for index, item in enumerate(items) for field in ITEM_ARRAYS
    }
    arrays["names"] = np.array([item.name for item in items])
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def read_items(path: Path) -> list[Item]:
    with np.load(path, allow_pickle=False) as data:
        return [
            Item(str(name), *(data[f"{index}.{field}"] for field in ITEM_ARRAYS))
            for index, name in enumerate(data["names"])
        ]


def load_items(faces_dir: Path) -> list[Item]:
    items = []
    for name, rgb, lm, seg_path in parsing_iou.detected_photos(faces_dir):
        rules = parse_face(rgb, lm, method="rules", parts=False)
        net = parse_face(rgb, lm, method="net", parts=False)
        items.append(Item(name, rgb, lm, load_label_map(seg_path, 512), rules, net))
    return items


def aligned_item(item: Item, size: int) -> Item:
    """The photo of an item as `shmt align` crops it (size px), with the official map warped the same
    way and both parses redone on the crop: held-out scoring where the issue's checker looks."""
    height, width = item.rgb.shape[:2]
    ref = cv2.resize(item.ref, (width, height), interpolation=cv2.INTER_NEAREST)
    crop, ref_crop, lm = parsing_iou.aligned_view(item.rgb, ref, item.landmarks, size)
    rules = parse_face(crop, lm, method="rules", parts=False)
    net = parse_face(crop, lm, method="net", parts=False)
    return Item(item.name, crop, lm, ref_crop, rules, net)


# ----------------------------------------------------------------------------------------------------------
# augmentation


def _jitter(rng: np.random.Generator, iod: float, affine: np.ndarray) -> np.ndarray:
    """The window's affine moved, scaled and turned about the patch centre (landmark errors)."""
    sigma = FAR_SHIFT if rng.random() < FAR else SHIFT
    shift = rng.normal(0, sigma, 2) * iod
    scale = float(np.exp(rng.normal(0, 0.08)))
    angle = np.deg2rad(rng.normal(0, 4))
    c = np.array([(pp.PATCH_W - 1) / 2, (pp.PATCH_H - 1) / 2])
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    t = np.eye(3)
    t[:2, :2] = rot
    t[:2, 2] = c - rot @ c
    out = np.vstack([affine, [0, 0, 1]]) @ t
    out[:2, 2] += shift
    return out[:2]


def _lab(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb.astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab)


def _paint(lab: np.ndarray, alpha: np.ndarray, colour: np.ndarray, texture: float = 0.3) -> None:
    """Blend a Lab colour into lab in place (alpha (H, W) in [0, 1]), keeping some lightness texture."""
    a = alpha[..., None]
    mean_l = float((lab[..., 0] * alpha).sum() / max(alpha.sum(), 1e-3))
    target = np.empty_like(lab)
    target[..., 0] = colour[0] + texture * (lab[..., 0] - mean_l)
    target[..., 1:] = colour[1:]
    lab[:] = lab * (1 - a) + target * a


def _colour(rng: np.random.Generator, lo: float, hi: float, chroma: float) -> np.ndarray:
    return np.array([rng.uniform(lo, hi), *rng.uniform(-chroma, chroma, 2)], np.float32)


def _soft(mask: np.ndarray, sigma: float) -> np.ndarray:
    return cv2.GaussianBlur(mask.astype(np.float32), (0, 0), sigma)


def paint_eye(lab: np.ndarray, target: np.ndarray, rng: np.random.Generator) -> None:
    """Liner, wings, shadow, drawn lashes and white lines around the eye (target unchanged)."""
    eye = (target > 0.5).astype(np.uint8)
    if not eye.any():
        return
    ys, xs = np.nonzero(eye)
    if rng.random() < 0.5:  # shadow: a wide ring, often only above
        r = int(rng.integers(4, 14))
        ring = cv2.dilate(eye, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))) > 0
        ring &= eye == 0
        if rng.random() < 0.6:
            ring &= np.arange(pp.PATCH_H)[:, None] < ys.mean() + rng.uniform(-2, 3)
        _paint(lab, _soft(ring, r / 3) * rng.uniform(0.4, 1.0), _colour(rng, 10, 90, 70), rng.uniform(0, 0.8))
    if rng.random() < 0.5:  # liner hugging the eye, a wing now and then
        r = int(rng.integers(1, 5))
        ring = cv2.dilate(eye, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))) > 0
        ring &= eye == 0
        if rng.random() < 0.4:
            wing = np.zeros_like(eye)
            start = (int(xs.min()), int(ys.mean()))
            end = (int(xs.min() - rng.uniform(3, 14)), int(ys.mean() - rng.uniform(0, 8)))
            cv2.line(wing, start, end, 1, int(rng.integers(1, 4)))
            ring |= wing > 0
        light = rng.uniform(2, 25) if rng.random() < 0.8 else rng.uniform(70, 98)  # black, or white
        _paint(lab, _soft(ring, 0.6) * rng.uniform(0.7, 1.0), _colour(rng, light, light, 10), 0.1)
    if rng.random() < 0.25:  # drawn lashes or lines below the eye
        strokes = np.zeros_like(eye)
        for _ in range(int(rng.integers(3, 9))):
            x = int(rng.uniform(xs.min(), xs.max() + 1))
            y = int(ys.max() + rng.uniform(1, 4))
            cv2.line(strokes, (x, y), (x + int(rng.normal(0, 3)), y + int(rng.uniform(3, 10))), 1, 1)
        strokes &= 1 - eye
        _paint(lab, _soft(strokes, 0.5) * rng.uniform(0.6, 1.0), _colour(rng, 3, 30, 10), 0.1)


def _hair_colour(rng: np.random.Generator) -> np.ndarray:
    """Lab of a hair colour: black, brown, blonde or dyed."""
    r = rng.random()
    if r < 0.4:
        return np.array([rng.uniform(6, 30), rng.uniform(-3, 6), rng.uniform(-3, 10)], np.float32)
    if r < 0.7:
        return np.array([rng.uniform(22, 50), rng.uniform(3, 16), rng.uniform(8, 28)], np.float32)
    if r < 0.88:
        return np.array([rng.uniform(55, 85), rng.uniform(-2, 8), rng.uniform(14, 36)], np.float32)
    return _colour(rng, 20, 75, 60)


def _skin_colour(lab: np.ndarray, brow: np.ndarray) -> np.ndarray:
    """Median Lab of the lighter half of the patch away from the brow (skin, not hair, lashes or shadow)."""
    far = cv2.dilate(brow.astype(np.uint8), np.ones((9, 9), np.uint8)) == 0
    pixels = lab[far] if far.sum() > 50 else lab.reshape(-1, 3)
    pixels = pixels[pixels[:, 0] >= np.median(pixels[:, 0])]
    return np.median(pixels, axis=0).astype(np.float32)


def _brow_bottom(brow: np.ndarray) -> np.ndarray:
    """(PATCH_W,) float row of the brow's lower edge per column (interpolated where a column has none)."""
    cols = np.nonzero(brow.any(axis=0))[0]
    bottom = pp.PATCH_H - 1 - np.argmax(brow[::-1, cols], axis=0)
    return np.interp(np.arange(pp.PATCH_W), cols, bottom).astype(np.float32)


def paint_brow(lab: np.ndarray, target: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Costume brows (the brow blocked out with skin-coloured paste, another drawn higher up: the target
    follows the drawn one, as the official parser does), brows recoloured any colour or faded to the
    skin (blonde, low contrast), eye shadow up to and over the brow, glitter and gems on and around it,
    drawn strokes, and thick or thin bangs of any hair colour over it; returns the target (bangs are
    not brow, as the official parser calls them hair)."""
    brow = target > 0.5
    rows = np.arange(pp.PATCH_H, dtype=np.float32)[:, None]
    if brow.any() and rng.random() < BLOCK_OUT:  # blocked out, a brow drawn above
        r = int(rng.integers(1, 4))
        cover = cv2.dilate(brow.astype(np.uint8), disk(r))
        alpha = _soft(cover, 1.0) * rng.uniform(0.85, 1.0)
        _paint(lab, alpha, _skin_colour(lab, brow) + rng.normal(0, 2, 3).astype(np.float32), 0.15)
        target = np.where(alpha > 0.5, 0.0, target).astype(np.float32)
        m = np.array([[1, 0, rng.normal(0, 3)], [0, 1, -rng.uniform(0.15, 0.45) * pp.PATCH_H]], np.float32)
        drawn = cv2.warpAffine(brow.astype(np.uint8), m, (pp.PATCH_W, pp.PATCH_H), flags=cv2.INTER_NEAREST)
        k = int(rng.integers(-1, 3))
        if k:
            kernel = disk(abs(k))
            drawn = cv2.dilate(drawn, kernel) if k > 0 else cv2.erode(drawn, kernel)
        colour = _colour(rng, 5, 35, 10) if rng.random() < 0.5 else _colour(rng, 10, 90, 80)
        _paint(lab, _soft(drawn, 0.7) * rng.uniform(0.8, 1.0), colour, 0.2)
        target = np.maximum(target, _soft(drawn, 0.5)).astype(np.float32)
        brow = target > 0.5
    if brow.any() and rng.random() < 0.3:  # brow colour of any colour
        _paint(lab, _soft(brow, 0.8) * rng.uniform(0.4, 1.0), _colour(rng, 10, 95, 90), 0.5)
    elif brow.any() and rng.random() < 0.15:  # faded towards the skin: blonde or low-contrast brows
        skin = _skin_colour(lab, brow)
        shade = skin + np.array([-rng.uniform(3, 15), rng.uniform(-2, 4), rng.uniform(0, 15)], np.float32)
        _paint(lab, _soft(brow, 0.8) * rng.uniform(0.4, 0.85), shade, rng.uniform(0.3, 0.8))
    if brow.any() and rng.random() < 0.2:  # eye shadow from below up to (or over) the brow's lower edge
        edge = _brow_bottom(brow)[None, :] + rng.uniform(-3, 3)
        depth = rng.uniform(6, 20)
        band = ((rows > edge) & (rows < edge + depth)).astype(np.float32)
        if rng.random() < 0.3:  # a haze over the brow and above it as well
            band = np.maximum(
                band, (rows > edge - rng.uniform(8, 25)).astype(np.float32) * rng.uniform(0.3, 0.6)
            )
        _paint(lab, _soft(band, rng.uniform(1, 3)) * rng.uniform(0.4, 0.95), _colour(rng, 15, 85, 80), 0.5)
    if brow.any() and rng.random() < 0.15:  # glitter and gems on and around the brow
        r = int(rng.integers(3, 12))
        area = cv2.dilate(brow.astype(np.uint8), disk(r))
        if rng.random() < 0.5:
            area &= (rows < _brow_bottom(brow)[None, :] + 1).astype(np.uint8)  # on and above only
        if rng.random() < 0.4:  # a coloured haze under the sparkle
            _paint(lab, _soft(area, 2.0) * rng.uniform(0.2, 0.6), _colour(rng, 40, 85, 70), 0.6)
        specks = (rng.random(area.shape) < rng.uniform(0.03, 0.25)) & (area > 0)
        if rng.random() < 0.3:
            for _ in range(int(rng.integers(2, 7))):
                y, x = rng.integers(0, pp.PATCH_H), rng.integers(0, pp.PATCH_W)
                if area[y, x]:
                    cv2.circle(specks.view(np.uint8), (int(x), int(y)), int(rng.integers(1, 3)), 1, -1)
        _paint(
            lab, _soft(specks, rng.uniform(0.3, 0.7)) * rng.uniform(0.6, 1.0), _colour(rng, 65, 100, 50), 0.2
        )
    if rng.random() < 0.15:  # a drawn line above or below the brow
        stroke = np.zeros(brow.shape, np.uint8)
        y = rng.uniform(2, pp.PATCH_H - 2)
        pts = np.stack(
            [np.linspace(0, pp.PATCH_W, 8), y + rng.normal(0, 3) * np.sin(np.linspace(0, 3, 8))], 1
        )
        cv2.polylines(stroke, [np.round(pts).astype(np.int32)], False, 1, int(rng.integers(1, 4)))
        stroke &= ~brow
        _paint(lab, _soft(stroke, 0.6) * rng.uniform(0.6, 1.0), _colour(rng, 5, 60, 50), 0.2)
    if brow.any() and rng.random() < BANGS:  # bangs: a fringe down to a wavy line through the brow
        brow_rows = np.nonzero(brow.any(axis=1))[0]
        y0 = rng.uniform(brow_rows.min() - 2, brow_rows.max() + 2)
        cols = np.arange(pp.PATCH_W, dtype=np.float32)
        edge = (
            y0
            + rng.normal(0, 0.2) * (cols - pp.PATCH_W / 2)
            + rng.uniform(0, 3) * np.sin(cols * rng.uniform(0.1, 0.5))
        )
        alpha = np.clip(edge[None, :] - rows + 0.5, 0, 1)
        left = rng.uniform(-10, pp.PATCH_W * 0.6)
        alpha *= ((cols >= left) & (cols <= left + rng.uniform(15, 80)))[None, :]
        colour = _hair_colour(rng)
        if rng.random() < 0.5:  # thick: the brow barely shows through
            strands = cv2.GaussianBlur(rng.normal(0, 1, (1, pp.PATCH_W)).astype(np.float32), (0, 0), 0.8)[0]
            shade = np.broadcast_to(strands[None, :], alpha.shape)
            a = alpha * rng.uniform(0.6, 1.0)
        else:  # thin: separate strands, slanted, with skin and brow between them
            slope = rng.normal(0, 0.3)
            x = cols[None, :] + slope * rows
            phase = rng.uniform(0, 2 * np.pi, 3)
            freq = rng.uniform(0.3, 1.2)
            wave = sum(np.sin(x * freq * (1 + 0.37 * i) + phase[i]) for i in range(3)) / 3
            cover = np.clip((wave - rng.uniform(-0.4, 0.3)) * 4, 0, 1)
            shade = wave
            a = alpha * cover * rng.uniform(0.5, 0.95)
        hair = np.empty_like(lab)
        hair[..., 0] = np.clip(colour[0] + rng.uniform(3, 12) * shade, 0, 100)
        hair[..., 1:] = colour[1:]
        lab[:] = lab * (1 - a[..., None]) + hair * a[..., None]
        # The official parser calls hair what the strands cover densely: thin sparse strands leave gaps.
        target = np.where(_soft(a, 1.5) > 0.35, 0.0, target).astype(np.float32)
    return target


def paint_nose(lab: np.ndarray, target: np.ndarray, rng: np.random.Generator) -> None:
    """Contour and highlight strokes along the bridge (target unchanged). The nose patch is transposed:
    x runs down the nose, y across it (the midline near PATCH_H / 2). The strokes stay within the
    target's own length, so they teach robustness to paint, not a different bridge top."""
    rows = np.nonzero((target > 0.5).any(axis=0))[0]  # patch x (down the nose) holding nose
    if rows.size == 0:
        return
    top, bottom = int(rows.min()), int(rows.max())
    mid = pp.PATCH_H / 2 - 0.5 + rng.normal(0, 1.0)
    if rng.random() < 0.4:  # contour: two soft dark bands either side of the bridge
        band = np.zeros(target.shape, np.uint8)
        x0 = int(rng.uniform(top, top + 0.3 * (bottom - top)))
        x1 = int(rng.uniform(top + 0.5 * (bottom - top), bottom + 1))
        off = rng.uniform(3, 10)
        width = int(rng.integers(2, 6))
        for side in (-1, 1):
            y = round(mid + side * off)
            cv2.line(band, (x0, y), (x1, round(y + side * rng.uniform(0, 3))), 1, width)
        _paint(
            lab, _soft(band, rng.uniform(1.0, 3.0)) * rng.uniform(0.15, 0.5), _colour(rng, 20, 55, 25), 0.7
        )
    if rng.random() < 0.4:  # highlight down the bridge
        line = np.zeros(target.shape, np.uint8)
        x0 = int(rng.uniform(top, top + 0.3 * (bottom - top)))
        x1 = int(rng.uniform(top + 0.4 * (bottom - top), bottom + 1))
        y = round(mid)
        cv2.line(line, (x0, y), (x1, y + int(rng.normal(0, 1))), 1, int(rng.integers(1, 5)))
        _paint(lab, _soft(line, rng.uniform(0.8, 2.0)) * rng.uniform(0.2, 0.6), _colour(rng, 75, 98, 10), 0.7)


def paint_lips(
    lab: np.ndarray, target: np.ndarray, upper: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Lipstick of any colour (black, blue, nude...), glitter, gloss, a liner drawn outside or inside the
    outline, and now and then an opened mouth (teeth and a dark gap over the lips' middle, which the
    target then calls not lip); returns the target. upper: (H, W) soft mask of the upper lip."""
    lips = (target > 0.5).astype(np.uint8)
    if not lips.any():
        return target
    ys, xs = np.nonzero(lips)
    if rng.random() < 0.6:  # lipstick
        colour = _colour(rng, 3, 25, 8) if rng.random() < 0.2 else _colour(rng, 15, 90, 80)
        _paint(lab, _soft(lips, rng.uniform(0.4, 1.2)) * rng.uniform(0.4, 1.0), colour, rng.uniform(0.2, 0.8))
    if rng.random() < 0.3:  # liner on an outline grown or shrunk by up to 2 px
        r = int(rng.integers(-2, 3))
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * abs(r) + 1, 2 * abs(r) + 1))
        shape = cv2.dilate(lips, kernel) if r > 0 else cv2.erode(lips, kernel) if r < 0 else lips
        ring = cv2.morphologyEx(shape, cv2.MORPH_GRADIENT, np.ones((2, 2), np.uint8))
        _paint(lab, _soft(ring, 0.6) * rng.uniform(0.5, 1.0), _colour(rng, 5, 60, 50), 0.2)
    if rng.random() < 0.15:  # glitter: bright and dark specks on the lips
        specks = (rng.random(lips.shape) < rng.uniform(0.05, 0.3)) & (lips > 0)
        _paint(lab, _soft(specks, 0.4) * rng.uniform(0.5, 1.0), _colour(rng, 60, 100, 30), 0.2)
    if rng.random() < 0.25:  # gloss: soft highlights on the lips
        spots = np.zeros_like(lips)
        for _ in range(int(rng.integers(1, 4))):
            i = int(rng.integers(len(xs)))
            axes = (int(rng.integers(2, 8)), int(rng.integers(1, 3)))
            cv2.ellipse(spots, (int(xs[i]), int(ys[i])), axes, float(rng.normal(0, 10)), 0, 360, 1, -1)
        _paint(lab, _soft(spots & lips, 1.0) * rng.uniform(0.3, 0.8), _colour(rng, 85, 100, 5), 0.3)
    top = upper > 0.5
    bottom = (target > 0.5) & ~top
    if rng.random() < 0.25 and top.any() and bottom.any():  # open mouth over the lips' middle
        cx = float(xs.mean())
        cols = slice(max(int(cx) - 3, 0), int(cx) + 4)
        t_rows = np.nonzero(top[:, cols].any(axis=1))[0]
        b_rows = np.nonzero(bottom[:, cols].any(axis=1))[0]
        if t_rows.size and b_rows.size:
            cy = (t_rows.max() + b_rows.min()) / 2 + rng.normal(0, 0.5)
            half_w = (xs.max() - xs.min()) * rng.uniform(0.25, 0.42)
            half_h = rng.uniform(1.5, 6.0)
            rows = np.arange(pp.PATCH_H, dtype=np.float32)[:, None]
            ell = ((np.arange(pp.PATCH_W, dtype=np.float32)[None, :] - cx) / half_w) ** 2 + (
                (rows - cy) / half_h
            ) ** 2
            alpha = np.clip((1.0 - ell) * 3.0, 0, 1).astype(np.float32)
            teeth = rows < cy + rng.uniform(-0.5, 0.6) * half_h
            inside = np.where(teeth, 1.0, 0.0).astype(np.float32)
            if rng.random() < 0.8:
                _paint(lab, alpha * inside, _colour(rng, 70, 95, 6), 0.4)
            _paint(
                lab,
                alpha * (1 - inside),
                np.array([rng.uniform(5, 35), rng.uniform(5, 30), 10.0], np.float32),
                0.3,
            )
            target = np.where(alpha > 0.5, 0.0, target).astype(np.float32)
    return target


def paint_ear(lab: np.ndarray, target: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Hair over the ear: a lock from the window's top or outer side down to a wavy edge, thick or in
    strands, of any hair colour; returns the target (not ear where the hair covers it densely, as the
    official parser calls it hair). The ear patch is transposed: x runs down the face, y across it
    from the outside (y = 0) to the cheek."""
    if rng.random() >= EAR_HAIR:
        return target
    rows = np.arange(pp.PATCH_H, dtype=np.float32)[:, None]
    cols = np.arange(pp.PATCH_W, dtype=np.float32)[None, :]
    if rng.random() < 0.5:  # from the top: covers x below a wavy line across the ear
        edge = rng.uniform(0.2, 0.8) * pp.PATCH_W + rng.uniform(0, 4) * np.sin(rows * rng.uniform(0.1, 0.4))
        alpha = np.clip(edge - cols + 0.5, 0, 1)
    else:  # from the outside: covers y up to a wavy line down the ear
        edge = rng.uniform(0.15, 0.6) * pp.PATCH_H + rng.uniform(0, 4) * np.sin(cols * rng.uniform(0.1, 0.4))
        alpha = np.clip(edge - rows + 0.5, 0, 1)
    colour = _hair_colour(rng)
    strands = np.sin(cols * rng.uniform(0.3, 1.0) + rows * rng.normal(0, 0.3) + rng.uniform(0, 6))
    if rng.random() < 0.5:
        a = alpha * rng.uniform(0.7, 1.0)
    else:  # strands with the ear between them
        a = alpha * np.clip((strands - rng.uniform(-0.4, 0.3)) * 4, 0, 1) * rng.uniform(0.5, 0.95)
    hair = np.empty_like(lab)
    hair[..., 0] = np.clip(colour[0] + rng.uniform(3, 12) * strands, 0, 100)
    hair[..., 1:] = colour[1:]
    lab[:] = lab * (1 - a[..., None]) + hair * a[..., None]
    return np.where(_soft(a, 1.5) > 0.35, 0.0, target).astype(np.float32)


def colour_jitter(lab: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Lab patch -> uint8 RGB with hue, saturation, contrast, brightness, gamma, blur, noise, low res."""
    if rng.random() < 0.5:
        angle = np.deg2rad(rng.uniform(-40, 40))
        a, b = lab[..., 1].copy(), lab[..., 2].copy()
        lab[..., 1], lab[..., 2] = (
            a * np.cos(angle) - b * np.sin(angle),
            a * np.sin(angle) + b * np.cos(angle),
        )
    lab[..., 1:] *= rng.uniform(0.5, 1.4)
    out = cv2.cvtColor(lab, cv2.COLOR_Lab2RGB)
    out = (out - 0.5) * rng.uniform(0.7, 1.3) + 0.5 + rng.uniform(-0.12, 0.12)
    out = np.clip(out, 0, 1) ** rng.uniform(0.7, 1.4)
    r = rng.random()
    if r < 0.15:
        out = cv2.GaussianBlur(out, (0, 0), rng.uniform(0.4, 1.2))
    elif r < 0.3:  # low resolution
        f = rng.uniform(0.4, 0.8)
        small = cv2.resize(out, None, fx=f, fy=f, interpolation=cv2.INTER_AREA)
        out = cv2.resize(small, (pp.PATCH_W, pp.PATCH_H), interpolation=cv2.INTER_LINEAR)
    out = out + rng.normal(0, rng.uniform(0, 0.03), out.shape).astype(np.float32)
    return np.clip(np.round(out * 255), 0, 255).astype(np.uint8)


def training_sample(item: Item, part: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(input (C, H, W) float32, soft target (H, W) float32) of part index `part` of pp.PARTS."""
    kind, label, points, mirrored = pp.PARTS[part]
    if kind in (pp.NOSE_KIND, pp.LIPS_KIND):
        mirrored = bool(rng.random() < 0.5)  # the nose's and lips' flip augmentation
    frame = Frame(item.landmarks)
    affine = _jitter(rng, frame.iod, pp.patch_affine(kind, item.landmarks[points], frame, mirrored))
    rgb = pp.sample_patch(item.rgb, affine)
    height, width = item.rgb.shape[:2]
    sy, sx = item.ref.shape[0] / height, item.ref.shape[1] / width  # 512 px map, or an align crop's own
    photo_to_ref = np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5]])
    to_ref = photo_to_ref @ np.vstack([affine, [0, 0, 1]])
    target = pp.sample_patch(pp.part_mask(item.ref, label).astype(np.float32), to_ref)
    prior = None
    if rng.random() >= PRIOR_DROP:
        prior = pp.sample_patch(pp.part_mask(item.rules, label).astype(np.uint8), affine, nearest=True)
        if rng.random() < PRIOR_SHIFT:
            m = np.array([[1, 0, rng.normal(0, 3)], [0, 1, rng.normal(0, 2)]], np.float32)
            prior = cv2.warpAffine(prior, m, (pp.PATCH_W, pp.PATCH_H), flags=cv2.INTER_NEAREST)
    lab = _lab(rgb)
    if kind is pp.EYES:
        paint_eye(lab, target, rng)
    elif kind is pp.NOSE_KIND:
        paint_nose(lab, target, rng)
    elif kind is pp.LIPS_KIND:
        upper = pp.sample_patch((item.ref == U_LIP).astype(np.float32), to_ref)
        target = paint_lips(lab, target, upper, rng)
    elif kind is pp.BROWS:
        target = paint_brow(lab, target, rng)
    else:
        target = paint_ear(lab, target, rng)
    return pp.patch_input(colour_jitter(lab, rng), prior), target


# ----------------------------------------------------------------------------------------------------------
# training and evaluation


def train(
    items: list[Item], kind: pp.PartKind, steps: int, seed: int, batch: int = 32, log: bool = True
) -> pp.PartNet:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    parts = [i for i, p in enumerate(pp.PARTS) if p[0] is kind]
    net = pp.PartNet()

    def next_batch() -> tuple[torch.Tensor, torch.Tensor]:
        picks = zip(rng.integers(len(items), size=batch), rng.integers(len(parts), size=batch), strict=True)
        samples = [training_sample(items[i], parts[j], rng) for i, j in picks]
        x = torch.from_numpy(np.stack([s[0] for s in samples]))
        return x, torch.from_numpy(np.stack([s[1] for s in samples]))[:, None]

    def loss_of(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = net(x)
        prob = torch.sigmoid(logits)
        dice = 1 - (2 * (prob * y).sum((1, 2, 3)) + 1) / (prob.sum((1, 2, 3)) + y.sum((1, 2, 3)) + 1)
        return F.binary_cross_entropy_with_logits(logits, y) + 0.5 * dice.mean()

    return fit(net, steps, next_batch, loss_of, log_every=100 if log else 0, label=f"{kind.name} ")


def train_nets(
    items: list[Item], steps: int, seed: int, batch: int, kinds: tuple[str, ...], nets: dict[str, pp.PartNet]
) -> dict[str, pp.PartNet]:
    """nets with the networks of the named part kinds (re)trained on the items (kind i: seed + i)."""
    out = dict(nets)
    for i, k in enumerate(pp.KINDS):
        if k.name in kinds:
            out[k.name] = train(items, k, steps, seed + i, batch)
    return out


def train_all(items: list[Item], steps: int, seed: int, batch: int) -> dict[str, pp.PartNet]:
    """The networks of every part kind trained on all the items (the shipped ones)."""
    return train_nets(items, steps, seed, batch, tuple(k.name for k in pp.KINDS), {})


def save_nets(nets: dict[str, pp.PartNet], path: Path, chosen: dict[str, dict[str, Setting | None]]) -> None:
    """Float16 weights; metadata per base method: the kinds re-decided and their biases."""
    state = {}
    for name, net in nets.items():
        state.update(half_state(net, f"{name}."))
    metadata = {"source": "tools/parsing_parts_train.py", "data": "SHMT examples dev set"}
    for base, choice in chosen.items():
        metadata[base] = ",".join(k for k, v in choice.items() if v is not None)
        metadata[base + "_settings"] = ",".join(
            f"{k}={v[0]}:{v[1]}" for k, v in choice.items() if v is not None
        )
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=metadata)


@dataclass
class Output:
    """One held-out photo's part logits on top of each base parse, for scoring choices."""

    item: Item
    fold: int
    logits: dict[str, list]  # base method -> part_logits(...) on that base's labels


def network_output(nets: dict[str, pp.PartNet], item: Item, fold: int) -> Output:
    logits = {b: pp.part_logits(nets, item.rgb, item.landmarks, getattr(item, b), tuple(nets)) for b in BASES}
    return Output(item, fold, logits)


def output_labels(out: Output, base: str, choice: dict[str, Setting | None]) -> np.ndarray:
    """Labels of a base parse with the kinds whose choice is a setting (not None) re-decided."""
    parts = [p for p in out.logits[base] if choice.get(p[1].name) is not None]
    return pp.apply_logits(getattr(out.item, base), parts, {k: v for k, v in choice.items() if v is not None})


def balanced(rows: list, region: str) -> float:
    """(mean IoU over made-up photos + mean over bare photos) / 2 of a region."""
    means = []
    for kind in ("makeup", "non_makeup"):
        values = [r[1][region] for r in rows if r[0].split("/")[0] == kind and region in r[1]]
        if values:
            means.append(float(np.mean(values)))
    return float(np.mean(means)) if means else 0.0


def choose(outputs: list[Output], base: str) -> dict[str, Setting | None]:
    """Per part kind: None (the base parse keeps it) or the (bias, prior weight) of BIASES x
    PRIOR_WEIGHTS that scores highest on these outputs, by the balanced IoU of the kind's region."""
    items = [out.item for out in outputs]
    by_name = {out.item.name: out for out in outputs}
    choice: dict[str, Setting | None] = {}
    for kind in pp.KINDS:
        region = JUDGED_BY.get(kind.name, kind.name)
        best, best_score = None, balanced(score(items, lambda it: getattr(it, base)), region)
        for setting in [(b, w) for w in PRIOR_WEIGHTS for b in BIASES]:
            rows = score(
                items, lambda it, s=setting, n=kind.name: output_labels(by_name[it.name], base, {n: s})
            )
            value = balanced(rows, region)
            if value > best_score + 1e-4:
                best, best_score = setting, value
        choice[kind.name] = best
    return choice


def kfold_tables(
    outputs: list[Output], k: int, steps: int
) -> tuple[dict[str, dict[str, Setting | None]], list[dict[str, dict[str, Setting | None]]]]:
    """Print held-out tables: each base as it is, with both kinds at (bias, prior weight) (0, 0), and
    with the kinds and settings chosen per fold on the other folds' photos (nested). Returns the
    choice on all photos and each fold's nested choice."""
    per_fold: list[dict[str, dict[str, Setting | None]]] = [{} for _ in range(k)]
    results: dict[str, list] = {}
    for base in BASES:
        results[base] = []
        results[base + "+parts"] = []
        results[base + "+chosen"] = []
        for fold in range(k):
            held = [o for o in outputs if o.fold == fold]
            others = [o for o in outputs if o.fold != fold]
            chosen = choose(others, base)
            per_fold[fold][base] = chosen
            print(f"fold {fold} {base}: chosen {chosen}", flush=True)
            by_name = {o.item.name: o for o in held}
            items = [o.item for o in held]
            results[base] += score(items, lambda it, b=base: getattr(it, b))
            both = {kind.name: (0.0, 0.0) for kind in pp.KINDS}
            results[base + "+parts"] += score(
                items, lambda it, b=base, d=by_name, c=both: output_labels(d[it.name], b, c)
            )
            results[base + "+chosen"] += score(
                items, lambda it, b=base, c=chosen, d=by_name: output_labels(d[it.name], b, c)
            )
    for name, ious, _ in results["rules+parts"]:
        print(f"  {name:<24} " + "  ".join(f"{key} {v:.3f}" for key, v in ious.items()))
    print_table(f"{k}-fold held-out IoU ({steps} steps per fold)", results)
    final = {base: choose(outputs, base) for base in BASES}
    print(f"all photos: chosen {final}")
    return final, per_fold


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faces", type=Path, default=FACES)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=20261207)
    parser.add_argument("--out", type=Path, help="train on all photos and write the weights here")
    parser.add_argument("--kfold", type=int, default=0)
    parser.add_argument("--fold-dir", type=Path, help="write (or with --reuse read) fold<F>.safetensors here")
    parser.add_argument("--reuse", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--prior-drop", type=float, help="PRIOR_DROP for this run")
    parser.add_argument(
        "--only-fold",
        help="train just this fold (into --fold-dir), no table; 'all': the all-photos networks of --out"
        " (into --fold-dir/all.safetensors, which --out --reuse then reads)",
    )
    parser.add_argument(
        "--retrain",
        help="with --reuse: comma-separated part kinds trained anew (the others read from --fold-dir)",
    )
    parser.add_argument("--cache", type=Path, help=".npz of the loaded photos (written if missing)")
    parser.add_argument(
        "--aligned",
        type=int,
        metavar="N",
        help="score the held-out photos on their N px `shmt align` crops (training is unchanged)",
    )
    parser.add_argument(
        "--train-aligned",
        type=lambda text: [int(n) for n in text.split(",")],
        default=[],
        metavar="N[,N...]",
        help="train on each training photo's N px `shmt align` crops as well (aligned_item per size)",
    )
    args = parser.parse_args(argv)
    chosen: dict[str, dict[str, Setting | None]] = {}
    if args.prior_drop is not None:
        global PRIOR_DROP
        PRIOR_DROP = args.prior_drop
    torch.set_num_threads(args.threads)
    if args.cache is not None and args.cache.is_file():
        items = read_items(args.cache)
    else:
        items = load_items(args.faces)
        if args.cache is not None:
            write_items(args.cache, items)
    print(f"{len(items)} photos", flush=True)
    all_kinds = tuple(k.name for k in pp.KINDS)
    retrain = tuple(filter(None, (args.retrain or "").split(",")))
    if args.kfold:
        fold_of = folds(items, args.kfold)
        outputs: list[Output] = []
        fold_nets: dict[int, dict[str, pp.PartNet]] = {}
        only = None if args.only_fold in (None, "all") else int(args.only_fold)
        for fold in range(args.kfold) if args.only_fold is None else [only] if only is not None else []:
            train_items = [it for it, f in zip(items, fold_of, strict=True) if f != fold]
            if not args.reuse or retrain:  # only training reads them
                train_items += [aligned_item(it, n) for n in args.train_aligned for it in train_items]
            held = [it for it, f in zip(items, fold_of, strict=True) if f == fold]
            path = args.fold_dir / f"fold{fold}.safetensors" if args.fold_dir else None
            if args.reuse and path is not None:
                nets = pp.load_model(path).nets
                if retrain:
                    nets = train_nets(
                        train_items, args.steps, args.seed + 10 * fold, args.batch, retrain, nets
                    )
                    save_nets(nets, path, {})
            else:
                nets = train_nets(train_items, args.steps, args.seed + 10 * fold, args.batch, all_kinds, {})
                if path is not None:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    save_nets(nets, path, {})
            fold_nets[fold] = nets
            if args.only_fold is None:
                if args.aligned:
                    held = [aligned_item(it, args.aligned) for it in held]
                outputs += [network_output(nets, it, fold) for it in held]
        if args.only_fold == "all":
            all_path = args.fold_dir / "all.safetensors"
            items = items + [aligned_item(it, n) for n in args.train_aligned for it in items]
            if args.reuse and retrain and all_path.is_file():
                nets = train_nets(
                    items, args.steps, args.seed, args.batch, retrain, pp.load_model(all_path).nets
                )
            else:
                nets = train_all(items, args.steps, args.seed, args.batch)
            args.fold_dir.mkdir(parents=True, exist_ok=True)
            save_nets(nets, args.fold_dir / "all.safetensors", {})
        if args.only_fold is None:
            chosen, per_fold = kfold_tables(outputs, args.kfold, args.steps)
            if args.fold_dir is not None:
                # Each fold's weights with the settings chosen on the other folds: a held-out model.
                for fold, nets in fold_nets.items():
                    save_nets(nets, args.fold_dir / f"fold{fold}.safetensors", per_fold[fold])
    if args.out:
        if not args.kfold or args.only_fold is not None:
            parser.error("--out needs the full --kfold run (it chooses the kinds and biases to ship)")
        all_path = args.fold_dir / "all.safetensors" if args.fold_dir else None
        if args.reuse and all_path is not None and all_path.is_file():
            nets = pp.load_model(all_path).nets
        else:
            nets = train_all(items, args.steps, args.seed, args.batch)
        save_nets(nets, args.out, chosen)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
