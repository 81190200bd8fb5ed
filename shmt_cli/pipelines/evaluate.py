"""`shmt evaluate`: quality metrics over the results folders that `shmt transfer` writes.

Each results folder's `manifest.jsonl` names, per pair, the source and reference photos, the
outputs, and the prepared faces (aligned crop, parsing, landmarks, alignment) kept under `faces/`;
they are reused, not recomputed. Metrics are computed on the aligned 256x256 crops, except the
background PSNR, which compares the whole source photo with the whole result photo.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from shmt_cli.batch import CannotRun
from shmt_cli.decompose import FaceParts, load_parts
from shmt_cli.face.align import crop_face, invert_affine, read_sidecar, warp_affine
from shmt_cli.face.detect import default_detector
from shmt_cli.imageio import InputError, read_image
from shmt_cli.inputs import UsageError, display_path
from shmt_cli.manifest import Manifest
from shmt_cli.metrics import weight_free as wf
from shmt_cli.pipelines.transfer import paste_mask

#: Metric name → (description, True when higher is better).
METRICS: dict[str, tuple[str, bool]] = {
    "fidelity_de00": ("makeup fidelity: mean CIEDE2000 to the warped reference (lips, skin, eyes)", False),
    "fidelity_lips": ("CIEDE2000 on the lips", False),
    "fidelity_skin": ("CIEDE2000 on the skin", False),
    "fidelity_eyes": ("CIEDE2000 on the eye-shadow area", False),
    "hist_emd": ("colour-histogram distance: EMD of a*, b* per region (mean)", False),
    "content_ssim": ("content preservation: SSIM of the luminance detail in the face", True),
    "landmark_px": ("landmark displacement, source vs result, px on the 256 crop", False),
    "identity": ("dlib face-recognition distance, source vs result (< 0.6 same person)", False),
    "same_person": ("share of pairs whose identity distance is under dlib's 0.6 threshold", True),
    "background_psnr": ("PSNR outside the face mask, source vs result photo, dB", True),
    "cls": ("paper: DINO ViT-B/8 [CLS] cosine, reference vs result (makeup fidelity)", True),
    "keysim": ("paper: cosine of DINO key self-similarity matrices, source vs result (content)", True),
    "keysim_mse": ("Splice's structure distance: mean squared difference of the same matrices", False),
}
#: Set-level metrics (one number per folder).
SET_METRICS: dict[str, tuple[str, bool]] = {
    "fid": ("paper: FID between the reference set and the result set", False),
}


@dataclass(frozen=True)
class PairRecord:
    """One finished pair of a results folder, as its manifest line describes it."""

    folder: Path
    source: str
    reference: str
    output: Path
    crop: Path | None
    source_parts: Path
    reference_parts: Path

    @property
    def pair(self) -> tuple[str, str]:
        return (self.source, self.reference)


def read_results(folder: Path) -> list[PairRecord]:
    """The finished pairs of a results folder (last manifest record per pair, status ok)."""
    if not (folder / "manifest.jsonl").is_file():
        raise UsageError(
            f"{display_path(folder)} has no manifest.jsonl: is it a `shmt transfer` output folder?"
        )
    records = []
    for record in Manifest(folder).latest().values():
        if record.get("command") != "transfer" or record.get("status") != "ok":
            continue
        outputs = record.get("outputs") or []
        if not outputs or not record.get("source_parts"):
            continue
        crop = next((folder / o for o in outputs if o.endswith("_crop.png")), None)
        records.append(
            PairRecord(
                folder=folder,
                source=record["source"],
                reference=record["reference"],
                output=folder / outputs[0],
                crop=crop,
                source_parts=folder / record["source_parts"],
                reference_parts=folder / record["reference_parts"],
            )
        )
    return records


def result_crop(record: PairRecord, source: FaceParts) -> np.ndarray:
    """The result in the source crop's geometry: the `_crop.png` when written, else re-cropped."""
    if record.crop is not None and record.crop.is_file():
        return read_image(record.crop)
    result = read_image(record.output)
    sidecar = record.source_parts.with_suffix(".json")
    if sidecar.is_file():
        return crop_face(result, read_sidecar(sidecar).matrix, source.image.shape[0])
    size = source.image.shape[0]
    return result if result.shape[:2] == (size, size) else cv2.resize(result, (size, size), cv2.INTER_AREA)


def background_psnr_photo(record: PairRecord, source: FaceParts) -> float:
    """PSNR outside the (grown) face region, on the whole photos when the source was a photo."""
    sidecar = record.source_parts.with_suffix(".json")
    result = read_image(record.output)
    if sidecar.is_file():
        aligned = read_sidecar(sidecar)
        photo = read_image(record.source)
        if photo.shape != result.shape:
            raise InputError(f"result {display_path(record.output)} is not the size of its source photo")
        crop_to_photo = invert_affine(aligned.matrix)
        region = warp_affine(paste_mask(source.labels).astype(np.float32), crop_to_photo, photo.shape[1::-1])
        return wf.background_psnr(photo, result, region > 0)
    if result.shape != source.image.shape:
        result = cv2.resize(result, source.image.shape[1::-1], interpolation=cv2.INTER_AREA)
    return wf.background_psnr(source.image, result, paste_mask(source.labels) > 0)


def pair_metrics(record: PairRecord) -> dict[str, float]:
    """Every weight-free metric of one pair."""
    source = load_parts(record.source_parts)
    reference = load_parts(record.reference_parts)
    result = result_crop(record, source)
    found = default_detector().detect(result)
    result_landmarks = found[0].landmarks if found else source.landmarks
    fidelity = wf.makeup_fidelity(
        result, source.labels, source.landmarks, reference.image, reference.labels, reference.landmarks
    )
    histogram = wf.histogram_distance(
        result, source.labels, source.landmarks, reference.image, reference.labels, reference.landmarks
    )
    face = wf.face_mask(source.labels)
    identity = (
        wf.identity_distance(source.image, source.landmarks, result, result_landmarks) if found else math.nan
    )
    return {
        "fidelity_de00": fidelity["mean"],
        "fidelity_lips": fidelity["lips"],
        "fidelity_skin": fidelity["skin"],
        "fidelity_eyes": fidelity["eyes"],
        "hist_emd": histogram["mean"],
        "content_ssim": wf.content_preservation(source.image, result, face),
        "landmark_px": wf.landmark_displacement(source.landmarks, result_landmarks) if found else math.nan,
        "identity": identity,
        "same_person": math.nan if math.isnan(identity) else float(identity < wf.SAME_PERSON_DISTANCE),
        "background_psnr": background_psnr_photo(record, source),
    }


def statistics(values: Sequence[float]) -> dict[str, float]:
    """mean, median, p10, p90 and count of the finite values (inf counts for PSNR: identical)."""
    array = np.array([v for v in values if not math.isnan(v)], dtype=np.float64)
    if array.size == 0:
        return {"mean": math.nan, "median": math.nan, "p10": math.nan, "p90": math.nan, "n": 0}
    if np.isinf(array).all():
        return {"mean": math.inf, "median": math.inf, "p10": math.inf, "p90": math.inf, "n": int(array.size)}
    finite = array[np.isfinite(array)]
    return {
        "mean": float(finite.mean()) if np.isinf(array).sum() == 0 else math.inf,
        "median": float(np.median(array)),
        "p10": float(np.percentile(array, 10)),
        "p90": float(np.percentile(array, 90)),
        "n": int(array.size),
    }


@dataclass
class FolderEvaluation:
    """Per-pair metric rows of one results folder, and the pairs that could not be evaluated."""

    folder: Path
    rows: dict[tuple[str, str], dict[str, float]]
    failures: list[tuple[str, str]]
    set_metrics: dict[str, float] = field(default_factory=dict)

    def summary(self, pairs: Sequence[tuple[str, str]] | None = None) -> dict[str, dict[str, float]]:
        keys = list(self.rows) if pairs is None else [p for p in pairs if p in self.rows]
        names = sorted({name for key in keys for name in self.rows[key]}, key=metric_order)
        return {name: statistics([self.rows[key].get(name, math.nan) for key in keys]) for name in names}


def metric_order(name: str) -> tuple[int, str]:
    order = list(METRICS)
    return (order.index(name), name) if name in order else (len(order), name)


def evaluate_folder(
    folder: Path,
    paper: PaperModels | None = None,
    progress: Callable[[str], None] | None = None,
) -> FolderEvaluation:
    """Weight-free metrics for every finished pair of a results folder, plus the paper's metrics
    (CLS and Key-sim per pair, FID per folder) when their models are given."""
    records = read_results(folder)
    rows: dict[tuple[str, str], dict[str, float]] = {}
    failures: list[tuple[str, str]] = []
    crops: dict[tuple[str, str], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    for record in records:
        if progress:
            progress(f"{Path(record.source).name} × {Path(record.reference).name}")
        try:
            if not record.output.is_file():
                # Name the missing result: the reader's own message would not say which file it was.
                raise InputError(f"result {display_path(record.output)} is missing")
            rows[record.pair] = pair_metrics(record)
            if paper is not None:
                source, reference = load_parts(record.source_parts), load_parts(record.reference_parts)
                crops[record.pair] = (source.image, reference.image, result_crop(record, source))
        except (InputError, OSError, ValueError) as exc:
            failures.append((f"{record.source} | {record.reference}", str(exc).splitlines()[0]))
    evaluation = FolderEvaluation(folder, rows, failures)
    if paper is not None and crops:
        evaluation.set_metrics.update(paper.score(crops, rows))
    return evaluation


@dataclass
class PaperModels:
    """The networks of the paper's metrics, loaded once from local weight files (never downloaded)."""

    dino: Any
    inception: Any
    device: str = "cpu"

    @classmethod
    def load(
        cls, dino_weights: Path | None, inception_weights: Path | None, device: str = "cpu"
    ) -> PaperModels:
        """Raises metrics.paper.WeightsNotFoundError / CheckpointError with messages naming the file."""
        from shmt_cli.metrics.inception import load_fid_inception
        from shmt_cli.metrics.paper import locate_dino_weights, locate_fid_inception_weights
        from shmt_cli.metrics.vit import load_dino_vitb8

        dino = load_dino_vitb8(locate_dino_weights(dino_weights), device)
        inception = load_fid_inception(locate_fid_inception_weights(inception_weights), device)
        return cls(dino, inception, device)

    def score(
        self,
        crops: dict[tuple[str, str], tuple[np.ndarray, np.ndarray, np.ndarray]],
        rows: dict[tuple[str, str], dict[str, float]],
    ) -> dict[str, float]:
        """Add cls / keysim / keysim_mse to `rows` (in place); return the set-level FID."""
        from shmt_cli.metrics.dino import dino_scores
        from shmt_cli.metrics.fid import fid

        pairs = sorted(crops)
        sources = [crops[p][0] for p in pairs]
        references = [crops[p][1] for p in pairs]
        results = [crops[p][2] for p in pairs]
        scores = dino_scores(self.dino, sources, references, results, device=self.device)
        for index, pair in enumerate(pairs):
            rows[pair].update(
                cls=float(scores.cls[index]),
                keysim=float(scores.keysim[index]),
                keysim_mse=float(scores.keysim_mse[index]),
            )
        unique_references = list({pair[1]: crops[pair][1] for pair in pairs}.values())
        if len(unique_references) < 2 or len(results) < 2:
            return {"fid": math.nan}
        return {"fid": fid(self.inception, unique_references, results, device=self.device)}


def shared_pairs(evaluations: Sequence[FolderEvaluation]) -> list[tuple[str, str]]:
    """The pairs every folder evaluated (for a fair side-by-side comparison)."""
    common = set(evaluations[0].rows)
    for evaluation in evaluations[1:]:
        common &= set(evaluation.rows)
    return sorted(common)


# ---------------------------------------------------------------------------------------------
# The whole command: checks first, then the folders, then the report files

PLOT_SUFFIXES = (".png", ".jpg", ".jpeg")


class NothingToEvaluate(Exception):
    """No pair can be evaluated (or compared); `failures` says why for each pair that failed."""

    def __init__(self, message: str, failures: list[tuple[str, str]]) -> None:
        super().__init__(message)
        self.failures = failures


@dataclass
class Evaluation:
    """The folders' evaluations and the pairs they are compared over (None: each over its own pairs)."""

    folders: list[FolderEvaluation]
    pairs: list[tuple[str, str]] | None

    @property
    def failures(self) -> list[tuple[str, str]]:
        return [f for e in self.folders for f in e.failures]


def check_report_path(path: Path, option: str, suffixes: tuple[str, ...]) -> None:
    """UsageError unless `path` can be written as a report file (missing folders are made)."""
    if suffixes and path.suffix.lower() not in suffixes:
        raise UsageError(f"{option} {path}: the file name must end in {', '.join(suffixes)}")
    if path.is_dir():
        raise UsageError(f"{option} {path}: is a folder, give a file name")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"{option} {path}: cannot write in {folder}")


def check_request(results: Sequence[Path], csv: Path | None, plot: Path | None) -> None:
    """UsageError for a missing results folder or a --csv/--plot that cannot be written: refused before
    the metrics are computed, not with a traceback after."""
    for folder in results:
        if not folder.is_dir():
            raise UsageError(f"{folder}: no such results folder")
    if csv:
        check_report_path(csv, "--csv", ())
    if plot:
        check_report_path(plot, "--plot", PLOT_SUFFIXES)


def load_paper_models(dino_weights: Path | None, inception_weights: Path | None, device: str) -> PaperModels:
    """`PaperModels.load`, with a missing or unreadable weight file as a UsageError (its first line)."""
    from shmt_cli.checkpoint import CheckpointError
    from shmt_cli.metrics.paper import WeightsNotFoundError

    try:
        return PaperModels.load(dino_weights, inception_weights, device)
    except (WeightsNotFoundError, CheckpointError) as exc:
        raise UsageError(str(exc).splitlines()[0]) from None


def evaluate_folders(
    results: Sequence[Path],
    models: PaperModels | None,
    compare: bool,
    status: Callable[[Path], AbstractContextManager[Any]] = lambda folder: nullcontext(),
) -> Evaluation:
    """Evaluate each folder (inside `status(folder)`, e.g. a spinner); several folders or `compare` are
    compared over the pairs they share. NothingToEvaluate when no pair is finished or none is shared."""
    folders = []
    for folder in results:
        with status(folder):
            folders.append(evaluate_folder(folder, models))
    evaluation = Evaluation(folders, None)
    if not any(e.rows for e in folders):
        raise NothingToEvaluate("no finished pairs to evaluate", evaluation.failures)
    if compare or len(folders) > 1:
        evaluation.pairs = shared_pairs(folders)
        if not evaluation.pairs and len(folders) > 1:
            names = ", ".join(str(e.folder) for e in folders)
            raise NothingToEvaluate(
                f"{names}: no finished pair is in every folder, nothing to compare", evaluation.failures
            )
    return evaluation


def write_reports(evaluation: Evaluation, csv: Path | None, plot: Path | None) -> None:
    """Write the --csv and --plot files; CannotRun naming the file asked for (not the temporary file
    the atomic write failed on)."""
    from shmt_cli.pipelines.evaluate_report import box_plot, write_csv

    target = csv
    try:
        if csv:
            write_csv(csv, evaluation.folders)
        target = plot
        if plot:
            box_plot(plot, evaluation.folders, evaluation.pairs or sorted(evaluation.folders[0].rows))
    except OSError as exc:
        raise CannotRun(f"cannot write {target}: {exc.strerror or exc}") from None
