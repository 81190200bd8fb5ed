"""Quality table of the built-in face parser against the official parser's maps.

Usage: python tools/parsing_iou.py [FACES_DIR] [--quiet] [--size=N] [--method=net|rules] [--no-parts]
    [--fit-nose]

FACES_DIR defaults to ../shared/faces (folders */images with the photos and */seg with 512x512 label
PNGs of the official FaceParsing.PyTorch parser). Each photo is parsed as it is (unaligned, at its own
size); the reference map is resized to the photo's size with nearest and both are compared there.
Prints per-image IoUs, the per-class mean over the photos (also pooled over all pixels, and per photo
folder), and the mean of the class means, plus the median parse CPU time per photo (one thread).

--method picks the parser (parse_face's method; without it parse_face's default, rules). The shipped
network was trained on the dev photos: for held-out figures use tools/parsing_train.py --kfold.

--no-parts leaves out the part networks (shmt_cli/face/parsing_parts.py, trained on these
photos: for held-out figures use tools/parsing_parts_train.py --kfold).

--size=N resizes every photo to N x N first (the size SHMT works at is 256), to check the parser
at another scale.

--aligned[=N] parses each photo's `shmt align` crop instead (N px, default 256: the face framed as
SHMT's data, landmarks carried into the crop as align's sidecar does) against the official map warped
the same way (nearest): how figures on align crops are measured.

--fit-nose re-derives the rule-based parser's mean nose (NOSE_ANCHORS, NOSE_TOP_V, NOSE_BOTTOM_V,
NOSE_HALF_WIDTHS for the anchor landmarks NOSE_ANCHOR_IDS) from the reference maps and writes it into
the "nose" section of shmt_cli/face/parsing_rules.json (atomically; the file's other sections are kept),
with its in-sample and leave-one-photo-out nose IoU (how well the mean shape carries over to unseen
photos). Objective: the 50 % level of the mean reference nose in the face frame (see _nose_shape); data:
the photos of FACES_DIR at their own size, each also mirrored.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from shmt_cli.face.align import alignment_matrix, crop_face, transform_points
from shmt_cli.face.detect import default_detector
from shmt_cli.face.parsing import load_label_map, parse_face
from shmt_cli.face.parsing_params import ParsingParams, source_path, write_params
from shmt_cli.face.parsing_shapes import NOSE_ANCHOR_IDS, face_frame, nose_outline_from_shape

# Regions compared, as sets of CelebAMask ids. "mouth" is scored only where the reference has it.
REGIONS: dict[str, tuple[int, ...]] = {
    "M_face": (1, 2, 6, 7, 8, 9, 11, 12, 17),
    "lips": (11, 12),
    "eyes": (4, 5),
    "brows": (6, 7),
    "nose": (2,),
    "mouth": (10,),
    "ears": (8, 9),
}
# Left out of a photo's scores when its reference map lacks them (closed mouths, ears under hair).
OPTIONAL = {"mouth", "ears"}


def iou(pred: np.ndarray, ref: np.ndarray) -> float:
    """Intersection over union of two boolean masks (1.0 when both are empty)."""
    union = np.logical_or(pred, ref).sum()
    return 1.0 if union == 0 else float(np.logical_and(pred, ref).sum() / union)


def region_ious(pred: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """IoU per region of REGIONS; optional regions are left out when the reference lacks them."""
    out = {}
    for name, ids in REGIONS.items():
        ref_mask = np.isin(ref, ids)
        if name in OPTIONAL and not ref_mask.any():
            continue
        out[name] = iou(np.isin(pred, ids), ref_mask)
    return out


def photo_pairs(faces_dir: Path) -> list[tuple[Path, Path]]:
    """(photo, reference label map) pairs under faces_dir/*/images and faces_dir/*/seg, sorted."""
    pairs = []
    for image in sorted(faces_dir.glob("*/images/*")):
        seg = image.parent.parent / "seg" / (image.stem + ".png")
        if seg.is_file():
            pairs.append((image, seg))
    return pairs


def detected_photos(faces_dir: Path) -> Iterator[tuple[str, np.ndarray, np.ndarray, Path]]:
    """(name "<folder>/<file>", RGB (H, W, 3) uint8, landmarks (68, 2) of the first face, reference map
    path) of every photo of photo_pairs in which dlib finds a face (the others are named on stderr)."""
    detector = default_detector()
    for image, seg in photo_pairs(faces_dir):
        rgb = cv2.cvtColor(cv2.imread(str(image), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        faces = detector.detect(rgb)
        if not faces:
            print(f"{image.name}: no face found, skipped", file=sys.stderr)
            continue
        yield f"{image.parent.parent.name}/{image.name}", rgb, faces[0].landmarks, seg


def aligned_view(
    rgb: np.ndarray, ref: np.ndarray, landmarks: np.ndarray, size: int = 256
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A photo as `shmt align` crops it: (crop (size, size, 3) uint8, the reference map (H, W) uint8 at
    the photo's size warped the same way with nearest (size, size), the landmarks in the crop (68, 2))."""
    matrix = alignment_matrix(landmarks, size)
    ref_crop = cv2.warpAffine(ref, matrix, (size, size), flags=cv2.INTER_NEAREST)
    return crop_face(rgb, matrix, size), ref_crop, transform_points(landmarks, matrix)


def evaluate(
    pairs: list[tuple[Path, Path]],
    verbose: bool = True,
    size: int | None = None,
    aligned: int | None = None,
    details: list[tuple[str, str, int, int]] | None = None,
    parse=None,
) -> tuple[dict[str, list[float]], float]:
    """Per-region lists of IoUs over the photos and the median parse CPU time in seconds.

    size: when given, photos are resized to size x size (area filter) before parsing.
    aligned: when given, each photo's align crop of that size is parsed instead (aligned_view).
    details: when given, gets one (folder, region, intersection, union) pixel count per photo and
    scored region (folder is the photo set, e.g. makeup / non_makeup).
    parse: parser (rgb, landmarks) -> labels; parse_face with its default method when None.
    """
    parse = parse_face if parse is None else parse
    detector = default_detector()
    scores: dict[str, list[float]] = {name: [] for name in REGIONS}
    seconds = []
    for image_path, seg_path in pairs:
        rgb = cv2.cvtColor(cv2.imread(str(image_path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        if size is not None:
            rgb = cv2.resize(rgb, (size, size), interpolation=cv2.INTER_AREA)
        faces = detector.detect(rgb)
        if not faces:
            print(f"{image_path.name}: no face found", file=sys.stderr)
            continue
        landmarks = faces[0].landmarks
        ref = load_label_map(seg_path, rgb.shape[:2])
        if aligned is not None:
            rgb, ref, landmarks = aligned_view(rgb, ref, landmarks, aligned)
        # CPU time, not wall time: the figure should not depend on what else the machine runs.
        start = time.process_time()
        pred = parse(rgb, landmarks)
        seconds.append(time.process_time() - start)
        row = region_ious(pred, ref)
        for name, value in row.items():
            scores[name].append(value)
            if details is not None:
                pred_mask, ref_mask = np.isin(pred, REGIONS[name]), np.isin(ref, REGIONS[name])
                inter, union = int((pred_mask & ref_mask).sum()), int((pred_mask | ref_mask).sum())
                details.append((image_path.parent.parent.name, name, inter, union))
        if verbose:
            cells = "  ".join(f"{name} {value:.3f}" for name, value in row.items())
            name = f"{image_path.parent.parent.name}/{image_path.name}"
            print(f"{name:<28} {cells}")
    return scores, float(np.median(seconds)) if seconds else float("nan")


# ---- nose shape: a mean CelebAMask nose in landmark-normalised coordinates

# Landmark index mirrored across the face's vertical axis (iBUG 300-W order), for the nose anchors.
_MIRROR = {27: 27, 28: 28, 29: 29, 30: 30, 31: 35, 32: 34, 33: 33, 34: 32, 35: 31, 39: 42, 42: 39}
_GRID = 100.0  # atlas pixels per interocular distance
_ROWS = 16


def _affine(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares 2x3 affine map of (K, 2) src points onto dst points."""
    design = np.hstack([src, np.ones((len(src), 1))])
    return np.linalg.lstsq(design, dst, rcond=None)[0].T


def _nose_samples(pairs: list[tuple[Path, Path]]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(local anchors (11, 2), reference nose mask, 2x3 image->local map) per photo, then mirrored."""
    detector = default_detector()
    out = []
    for image_path, seg_path in pairs:
        rgb = cv2.cvtColor(cv2.imread(str(image_path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        faces = detector.detect(rgb)
        if not faces:
            continue
        frame = face_frame(faces[0].landmarks)
        mask = (load_label_map(seg_path, rgb.shape[:2]) == 2).astype(np.float32)
        local = frame.to_local(faces[0].landmarks)
        rot = np.stack([frame.u, frame.v]) / frame.iod
        to_local = np.hstack([rot, (-rot @ frame.origin)[:, None]])
        out.append((local[list(NOSE_ANCHOR_IDS)], mask, to_local))
        mirrored = local[[_MIRROR[i] for i in NOSE_ANCHOR_IDS]] * np.array([-1.0, 1.0])
        out.append((mirrored, mask, np.diag([-1.0, 1.0]) @ to_local))
    return out


def _nose_shape(samples: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> dict[str, np.ndarray]:
    """Mean anchors and the half-width profile of the 50 % level of the nose atlas."""
    anchors = np.mean([a for a, _, _ in samples], axis=0)
    half = np.abs(anchors[:, 0]).max() + 0.6
    top, bottom = anchors[:, 1].min() - 0.6, anchors[:, 1].max() + 0.6
    width, height = round(2 * half * _GRID) + 1, round((bottom - top) * _GRID) + 1
    to_grid = np.array([[_GRID, 0.0, half * _GRID], [0.0, _GRID, -top * _GRID], [0.0, 0.0, 1.0]])
    atlas = np.zeros((height, width), np.float32)
    for local_anchors, mask, to_local in samples:
        to_canon = np.vstack([_affine(local_anchors, anchors), [0, 0, 1]])
        warp = (to_grid @ to_canon @ np.vstack([to_local, [0, 0, 1]]))[:2]
        atlas += cv2.warpAffine(mask, warp, (width, height), flags=cv2.INTER_LINEAR)
    atlas /= len(samples)
    atlas = (atlas + atlas[:, ::-1]) / 2  # the grid is centred on u = 0
    rows = np.nonzero((atlas >= 0.5).any(axis=1))[0]
    top_v, bottom_v = rows[0] / _GRID + top, rows[-1] / _GRID + top
    levels = np.linspace(top_v, bottom_v, _ROWS + 2)[1:-1]
    centre = (width - 1) / 2
    widths = []
    for v in levels:
        row = atlas[round(float(v - top) * _GRID), int(centre) :]
        outside = np.nonzero(row < 0.5)[0]
        edge = outside[0] if len(outside) else len(row) - 1
        # Sub-pixel: interpolate the 0.5 crossing between the last inside and first outside pixel.
        inside_value = row[edge - 1] if edge > 0 else 1.0
        frac = (inside_value - 0.5) / max(inside_value - row[edge], 1e-6) if edge > 0 else 0.0
        widths.append((edge - 1 + frac) / _GRID)
    return {
        "anchors": anchors,
        "top_v": np.float64(top_v),
        "bottom_v": np.float64(bottom_v),
        "half_widths": np.stack([levels, widths], axis=1),
    }


def _nose_iou(shape: dict[str, np.ndarray], sample: tuple[np.ndarray, np.ndarray, np.ndarray]) -> float:
    """IoU of a nose shape drawn on one photo (its sample of _nose_samples) with the photo's reference."""
    local_anchors, mask, to_local = sample
    outline = nose_outline_from_shape(
        local_anchors, shape["anchors"], shape["top_v"], shape["bottom_v"], shape["half_widths"]
    )
    from_local = np.linalg.inv(np.vstack([to_local, [0, 0, 1]]))[:2]
    points = outline @ from_local[:, :2].T + from_local[:, 2]
    pred = np.zeros(mask.shape, np.uint8)
    cv2.fillPoly(pred, [np.round(points * 16).astype(np.int32)], 1, shift=4)
    return iou(pred.astype(bool), mask > 0)


def _rounded(values: np.ndarray) -> list[list[float]]:
    """(K, 2) values rounded to 3 decimals as the file holds them (+ 0.0: no negative zeros)."""
    return [[round(float(a), 3) + 0.0, round(float(b), 3) + 0.0] for a, b in values]


def fit_nose(pairs: list[tuple[Path, Path]], path: Path | None = None) -> None:
    """Fit the mean nose on the given photos and write it into the nose section of the parameters
    file (shmt_cli/face/parsing_rules.json unless `path`), with its in-sample and leave-one-photo-out
    IoU (each photo's own sample and its mirror left out together)."""
    samples = _nose_samples(pairs)
    shape = _nose_shape(samples)
    in_sample = [_nose_iou(shape, samples[k]) for k in range(0, len(samples), 2)]
    held_out = [
        _nose_iou(_nose_shape(samples[:k] + samples[k + 2 :]), samples[k]) for k in range(0, len(samples), 2)
    ]
    target = source_path() if path is None else path
    document = ParsingParams.from_path(target).document
    # The section's statements ("fitted", "written_by") are kept; its figures and values replaced.
    section = {key: value for key, value in document.get("nose", {}).items() if key != "values"}
    section["in_sample_iou"] = round(float(np.mean(in_sample)), 3)
    section["leave_one_photo_out_iou"] = round(float(np.mean(held_out)), 3)
    section["photos"] = len(held_out)
    document["nose"] = section
    section["values"] = {
        "NOSE_ANCHOR_IDS": list(NOSE_ANCHOR_IDS),
        "NOSE_ANCHORS": _rounded(shape["anchors"]),
        "NOSE_TOP_V": round(float(shape["top_v"]), 3) + 0.0,
        "NOSE_BOTTOM_V": round(float(shape["bottom_v"]), 3) + 0.0,
        "NOSE_HALF_WIDTHS": _rounded(shape["half_widths"]),
    }
    write_params(document, target)
    print(
        f"nose IoU in sample {section['in_sample_iou']:.3f}, leave-one-photo-out "
        f"{section['leave_one_photo_out_iou']:.3f} over {len(held_out)} photos; written to {target}"
    )


def main(argv: list[str]) -> int:
    args = [a for a in argv if not a.startswith("--")]
    faces_dir = Path(args[0]) if args else Path(__file__).resolve().parents[2] / "shared" / "faces"
    pairs = photo_pairs(faces_dir)
    if not pairs:
        print(f"no photos with reference maps under {faces_dir}", file=sys.stderr)
        return 1
    if "--fit-nose" in argv:
        fit_nose(pairs)
        return 0
    sizes = [int(a.split("=", 1)[1]) for a in argv if a.startswith("--size=")]
    methods = [a.split("=", 1)[1] for a in argv if a.startswith("--method=")]
    aligned = [a.partition("=")[2] or "256" for a in argv if a.split("=")[0] == "--aligned"]
    # Without --method, parse_face's own default.
    options: dict = {"method": methods[0]} if methods else {}
    if "--no-parts" in argv:
        options["parts"] = False
    import torch

    torch.set_num_threads(1)  # per-face CPU time on one core
    details: list[tuple[str, str, int, int]] = []
    scores, seconds = evaluate(
        pairs,
        verbose="--quiet" not in argv,
        size=sizes[0] if sizes else None,
        aligned=int(aligned[0]) if aligned else None,
        details=details,
        parse=lambda rgb, lm: parse_face(rgb, lm, **options),
    )
    means = {name: float(np.mean(values)) for name, values in scores.items() if values}
    folders = sorted({folder for folder, _, _, _ in details})
    print()
    # "pooled" is the IoU of all photos' pixels together: small reference regions (a mouth barely
    # open) weigh less than in the mean of per-photo IoUs. Per-folder means show whether a change
    # helps both photo sets (e.g. makeup and non_makeup).
    print(
        f"{'region':<8} {'mean IoU':>8} {'photos':>6} {'pooled':>7}" + "".join(f" {f:>10}" for f in folders)
    )
    for name, value in means.items():
        rows = [(folder, inter, union) for folder, region, inter, union in details if region == name]
        inter, union = sum(r[1] for r in rows), sum(r[2] for r in rows)
        pooled = inter / union if union else 1.0
        cells = ""
        for folder in folders:
            per_photo = [i / u if u else 1.0 for f, i, u in rows if f == folder]
            cells += f" {np.mean(per_photo):10.3f}" if per_photo else f" {'-':>10}"
        print(f"{name:<8} {value:8.3f} {len(scores[name]):6d} {pooled:7.3f}{cells}")
    print(f"{'mean':<8} {np.mean(list(means.values())):8.3f}")
    print(f"parse CPU time {seconds * 1000:.1f} ms per photo (median over {len(pairs)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
