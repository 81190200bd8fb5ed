"""Quality table of the classic engine against two simple baselines on the dev photos.

Every non-makeup x makeup pair of ../shared/faces (15 x 21) is resized to 256x256 as SHMT does, with
landmarks from the dlib detector (scaled) and labels from the built-in parser or the official maps.
Methods: the classic engine at the chosen levels, per-region histogram matching (per Lab channel) and
global Reinhard colour transfer (Lab mean/std of the face). Printed: makeup fidelity (mean CIEDE2000
to the warped reference; lips, skin, eye-shadow area), a*/b* histogram EMD, content preservation
(detail SSIM), identity distance (dlib, on every n-th pair), background PSNR, landmark displacement
(on the identity sample). A contact sheet (source | reference | classic at each level) is written
to --sheet, never into the repository.

    python tools/classic_quality.py [--parser builtin|official] [--levels h0,h2,h4] [--sheet PATH]
        [--save-labels FILE.npz] [--measure-labels FILE.npz]

The scores are taken in the regions of the parse the transfer used, so a parser change moves them for
every method, the no-op included. To compare two parsers on the same regions: --save-labels writes this
run's label maps; a run of the other parser with --measure-labels FILE scores its transfers in those.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from shmt_cli.atomic import atomic_path
from shmt_cli.engines.classic import (
    ClassicParams,
    eye_shadow_mask,
    lab_to_rgb,
    prepare_reference,
    prepare_source,
    rgb_to_lab,
    transfer_prepared,
)
from shmt_cli.face.detect import default_detector
from shmt_cli.face.parsing import parse_face
from shmt_cli.metrics.weight_free import (
    background_psnr,
    content_preservation,
    default_embedder,
    face_mask,
    histogram_distance,
    landmark_displacement,
    makeup_fidelity_warped,
    summarise,
    warp_reference,
)

FACES = Path(__file__).resolve().parents[1].parent / "shared" / "faces"
SIZE = 256

Face = tuple[np.ndarray, np.ndarray, np.ndarray]  # (rgb, labels, landmarks)


def load_faces(kind: str, parser: str) -> list[tuple[str, Face]]:
    """(stem, face) for every photo of a dev-set folder, resized to SIZE x SIZE."""
    detector = default_detector()
    faces = []
    for path in sorted((FACES / kind / "images").iterdir()):
        photo = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        height, width = photo.shape[:2]
        detected = detector.detect(photo)
        if not detected:
            print(f"  no face in {path.name}: skipped")
            continue
        landmarks = detected[0].landmarks * [SIZE / width, SIZE / height]
        rgb = cv2.resize(photo, (SIZE, SIZE), interpolation=cv2.INTER_AREA)
        if parser == "official":
            seg = cv2.imread(str(FACES / kind / "seg" / f"{path.stem}.png"), cv2.IMREAD_GRAYSCALE)
            labels = cv2.resize(seg, (SIZE, SIZE), interpolation=cv2.INTER_NEAREST)
        else:
            labels = parse_face(rgb, landmarks)
        faces.append((path.stem, (rgb, labels, landmarks)))
    return faces


# ---------------------------------------------------------------------------------------------------
# Baselines


def _baseline_regions(labels: np.ndarray, landmarks: np.ndarray) -> dict[str, np.ndarray]:
    """Hard masks in painting order; eyes = eye-shadow area ∩ skin, painted over the skin."""
    skin = np.isin(labels, (1, 2))
    return {
        "skin": skin,
        "eyes": eye_shadow_mask(landmarks, labels.shape) & (labels == 1),
        "brows": np.isin(labels, (6, 7)),
        "lips": np.isin(labels, (11, 12)),
    }


def _match_channel(values: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Quantile mapping of 1D `values` onto the distribution of `target`."""
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[np.argsort(values, kind="stable")] = np.arange(len(values))
    levels = (np.arange(len(target)) + 0.5) / len(target)
    return np.interp((ranks + 0.5) / len(values), levels, np.sort(target))


def histogram_matching(source: Face, reference: Face) -> np.ndarray:
    """Per-region, per-Lab-channel histogram matching of the source to the reference."""
    src_rgb, src_labels, src_landmarks = source
    ref_rgb, ref_labels, ref_landmarks = reference
    src_lab, ref_lab = rgb_to_lab(src_rgb), rgb_to_lab(ref_rgb)
    out = src_lab.copy()
    ref_regions = _baseline_regions(ref_labels, ref_landmarks)
    for name, mask in _baseline_regions(src_labels, src_landmarks).items():
        target = ref_lab[ref_regions[name]]
        if not mask.any() or len(target) == 0:
            continue
        pixels = src_lab[mask]
        out[mask] = np.stack([_match_channel(pixels[:, c], target[:, c]) for c in range(3)], axis=-1)
    result = src_rgb.copy()
    changed = np.logical_or.reduce(list(_baseline_regions(src_labels, src_landmarks).values()))
    result[changed] = lab_to_rgb(out[changed])
    return result


def reinhard(source: Face, reference: Face) -> np.ndarray:
    """Global Reinhard transfer: the source face's Lab mean/std set to the reference face's."""
    src_rgb, src_labels, _ = source
    ref_rgb, ref_labels, _ = reference
    src_mask, ref_mask = face_mask(src_labels), face_mask(ref_labels)
    src_lab, ref_lab = rgb_to_lab(src_rgb), rgb_to_lab(ref_rgb)
    src_pixels, ref_pixels = src_lab[src_mask], ref_lab[ref_mask]
    scale = ref_pixels.std(axis=0) / np.maximum(src_pixels.std(axis=0), 1e-6)
    moved = (src_pixels - src_pixels.mean(axis=0)) * scale + ref_pixels.mean(axis=0)
    result = src_rgb.copy()
    result[src_mask] = lab_to_rgb(moved)
    return result


# ---------------------------------------------------------------------------------------------------


def score(
    result: np.ndarray,
    source: Face,
    reference: Face,
    warped: tuple[np.ndarray, np.ndarray],
    source_embedding: np.ndarray | None,
    source_landmarks_256: np.ndarray | None,
) -> dict[str, float]:
    src_rgb, src_labels, src_landmarks = source
    mask = face_mask(src_labels)
    fidelity = makeup_fidelity_warped(result, src_labels, src_landmarks, *warped)
    row = {
        "fidelity": fidelity["mean"],
        "lips": fidelity["lips"],
        "skin": fidelity["skin"],
        "eyes": fidelity["eyes"],
        "hist_emd": histogram_distance(result, src_labels, src_landmarks, *reference)["mean"],
        "content": content_preservation(src_rgb, result, mask),
        "bg_psnr": background_psnr(src_rgb, result, mask),
        "identity": math.nan,
        "lmk_px": math.nan,
    }
    if source_embedding is not None:
        embedding = default_embedder().embed(result, src_landmarks)
        row["identity"] = float(np.linalg.norm(embedding - source_embedding))
        found = default_detector().detect(result)
        if found and source_landmarks_256 is not None:
            row["lmk_px"] = landmark_displacement(source_landmarks_256, found[0].landmarks)
    return row


def contact_sheet(rows: list[list[np.ndarray]], path: Path, labels: list[str]) -> None:
    """Rows of equally sized RGB tiles with a caption strip on top, written as a PNG."""
    grid = np.vstack([np.hstack(row) for row in rows])
    caption = np.full((22, grid.shape[1], 3), 255, dtype=np.uint8)
    for index, text in enumerate(labels):
        cv2.putText(
            caption, text, (index * SIZE + 6, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(np.vstack([caption, grid]), cv2.COLOR_RGB2BGR))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parser", choices=("builtin", "official"), default="builtin")
    parser.add_argument("--levels", default="h0,h2,h4", help="comma-separated classic levels")
    parser.add_argument("--identity-every", type=int, default=4, help="identity/landmarks on every n-th pair")
    parser.add_argument("--max-pairs", type=int, default=0, help="stop after this many pairs (0: all)")
    parser.add_argument("--sheet", type=Path, default=Path("/tmp/classic_quality_sheet.png"))
    parser.add_argument("--sheet-rows", type=int, default=12)
    parser.add_argument("--save-labels", type=Path, help="write this run's label maps (npz) here")
    parser.add_argument(
        "--measure-labels", type=Path, help="score in these label maps (a --save-labels npz) instead"
    )
    args = parser.parse_args()
    if not FACES.is_dir():
        raise SystemExit(f"dev photos not found at {FACES}")
    if Path(__file__).resolve().parents[1] in args.sheet.resolve().parents:
        raise SystemExit("write the contact sheet outside the repository")

    import torch

    # Single-threaded: the pyramid's small convolutions only lose time to thread hand-offs on a busy CPU.
    torch.set_num_threads(1)
    started = time.perf_counter()
    sources = load_faces("non_makeup", args.parser)
    references = load_faces("makeup", args.parser)
    keyed = [(f"non_makeup/{stem}", face) for stem, face in sources] + [
        (f"makeup/{stem}", face) for stem, face in references
    ]
    if args.save_labels is not None:
        with atomic_path(args.save_labels) as tmp, open(tmp, "wb") as f:
            np.savez(f, **{key: face[1] for key, face in keyed})
    # The faces as scored: with the labels of --measure-labels, or as transferred.
    measured: dict[int, Face] = {id(face): face for _, face in keyed}
    if args.measure_labels is not None:
        with np.load(args.measure_labels, allow_pickle=False) as data:
            for key, face in keyed:
                if key not in data:
                    raise SystemExit(f"{args.measure_labels}: no labels for {key}")
                measured[id(face)] = (face[0], data[key], face[2])
    levels = args.levels.split(",")
    detector = default_detector()
    # Landmark displacement compares detections at the same 256 framing on both sides.
    source_landmarks_256 = {}
    for stem, face in sources:
        found = detector.detect(face[0])
        source_landmarks_256[stem] = found[0].landmarks if found else None
    print(
        f"{len(sources)} sources x {len(references)} references, parser={args.parser} "
        f"(loaded in {time.perf_counter() - started:.0f} s)"
    )

    methods: dict[str, Callable[[object, Face, Face], np.ndarray]] = {}
    for level in levels:
        params = ClassicParams(level=level)
        methods[f"classic {level}"] = lambda prep, s, r, params=params: transfer_prepared(
            prep[0], prep[1], params
        )
    methods["histogram match"] = lambda prep, s, r: histogram_matching(s, r)
    methods["reinhard"] = lambda prep, s, r: reinhard(s, r)
    methods["source (no-op)"] = lambda prep, s, r: s[0]

    rows: dict[str, list[dict[str, float]]] = {name: [] for name in methods}
    sheet: list[list[np.ndarray]] = []
    sheet_every = max(1, len(sources) * len(references) // max(args.sheet_rows, 1))
    prepared_sources = {stem: prepare_source(*face) for stem, face in sources}
    source_embeddings: dict[str, np.ndarray] = {}
    pair = 0
    for _ref_stem, reference in references:
        prepared_reference = prepare_reference(*reference)
        for src_stem, source in sources:
            scored_source, scored_reference = measured[id(source)], measured[id(reference)]
            warped = warp_reference(*scored_reference, source[2])
            with_identity = pair % args.identity_every == 0
            if with_identity and src_stem not in source_embeddings:
                source_embeddings[src_stem] = default_embedder().embed(source[0], source[2])
            embedding = source_embeddings[src_stem] if with_identity else None
            tiles = [source[0], reference[0]]
            for name, method in methods.items():
                result = method((prepared_sources[src_stem], prepared_reference), source, reference)
                rows[name].append(
                    score(
                        result,
                        scored_source,
                        scored_reference,
                        warped,
                        embedding,
                        source_landmarks_256[src_stem],
                    )
                )
                if name.startswith("classic"):
                    tiles.append(result)
            if pair % sheet_every == 0 and len(sheet) < args.sheet_rows:
                sheet.append(tiles)
            pair += 1
            if args.max_pairs and pair >= args.max_pairs:
                break
        if args.max_pairs and pair >= args.max_pairs:
            break

    columns = ["fidelity", "lips", "skin", "eyes", "hist_emd", "content", "identity", "bg_psnr", "lmk_px"]
    print(f"\n{pair} pairs; identity and landmarks on {len(range(0, pair, args.identity_every))} of them")
    print("fidelity/lips/skin/eyes: mean CIEDE2000 to the warped reference (lower = more makeup)")
    print("hist_emd: a*/b* EMD (lower better); content: detail SSIM (higher better); identity: dlib distance")
    print(f"{'method':<17}" + "".join(f"{column:>10}" for column in columns))
    for name, method_rows in rows.items():
        summary = summarise(method_rows)
        print(f"{name:<17}" + "".join(f"{summary[column]:>10.3f}" for column in columns))
    contact_sheet(sheet, args.sheet, ["source", "reference", *[f"classic {level}" for level in levels]])
    print(f"\ncontact sheet: {args.sheet}  ({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
