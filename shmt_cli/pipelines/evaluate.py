"""`shmt evaluate`: quality metrics over the results folders that `shmt transfer` writes.

Each results folder's `manifest.jsonl` names, per pair, the source and reference photos, the
outputs, and the prepared faces (aligned crop, parsing, landmarks, alignment) kept under `faces/`;
they are reused, not recomputed. Metrics are computed on the aligned 256x256 crops, except the
background PSNR, which compares the whole source photo with the whole result photo.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from shmt_cli.decompose import FaceParts, load_parts
from shmt_cli.face.align import crop_face, invert_affine, read_sidecar, warp_affine
from shmt_cli.face.detect import default_detector
from shmt_cli.imageio import InputError, read_image
from shmt_cli.inputs import UsageError, display_path
from shmt_cli.manifest import Manifest
from shmt_cli.metrics import weight_free as wf
from shmt_cli.metrics.wrong_face import wrong_face
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
    "wrong_face": ("1 when the result's face is not the source's; mean: share of such pairs", False),
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
        "wrong_face": wrong_face(source.landmarks, found, (result.shape[1], result.shape[0])),
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
        names = sorted({name for key in keys for name in self.rows[key]}, key=_metric_order)
        return {name: statistics([self.rows[key].get(name, math.nan) for key in keys]) for name in names}


def _metric_order(name: str) -> tuple[int, str]:
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


def write_csv(path: Path, evaluations: Sequence[FolderEvaluation]) -> None:
    """One row per folder and pair, one column per metric."""
    import csv
    import io

    names = sorted({n for e in evaluations for row in e.rows.values() for n in row}, key=_metric_order)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["folder", "source", "reference", *names])
    for evaluation in evaluations:
        for (source, reference), row in sorted(evaluation.rows.items()):
            writer.writerow([str(evaluation.folder), source, reference, *[_fmt(row.get(n)) for n in names]])
    from shmt_cli.atomic import write_bytes_atomic

    write_bytes_atomic(path, buffer.getvalue().encode("utf-8"))


def _fmt(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return "inf" if math.isinf(value) else f"{value:.6g}"


def to_json(
    evaluations: Sequence[FolderEvaluation], pairs: Sequence[tuple[str, str]] | None
) -> dict[str, Any]:
    """Per-pair rows and per-folder summaries, JSON-safe: every metric a number or null. null is NaN
    (not measurable) or an infinite PSNR (nothing changed there): a string "inf" broke numeric readers."""

    def clean(value: Any) -> Any:
        if isinstance(value, float):
            return None if not math.isfinite(value) else value
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        return value

    return {
        "folders": [
            {
                "folder": str(e.folder),
                "summary": clean(e.summary(pairs)),
                "set_metrics": clean(e.set_metrics),
                "pairs": [
                    {"source": s, "reference": r, **clean(row)} for (s, r), row in sorted(e.rows.items())
                ],
                "failures": [{"pair": key, "reason": reason} for key, reason in e.failures],
            }
            for e in evaluations
        ]
    }


def box_plot(path: Path, evaluations: Sequence[FolderEvaluation], pairs: Sequence[tuple[str, str]]) -> None:
    """One box plot per metric (columns) and folder (boxes), drawn with OpenCV: a PNG a person can read."""
    from shmt_cli.imageio import write_image_atomic

    names = [n for n in METRICS if any(n in row for e in evaluations for row in e.rows.values())]
    panel_w, panel_h, top, bottom, per_row = 300, 220, 40, 40, 3
    rows_of_panels = max(1, math.ceil(len(names) / per_row))
    block_h = panel_h + top + bottom
    sheet = np.full((block_h * rows_of_panels + 40, panel_w * per_row, 3), 255, np.uint8)
    colours = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189)]
    for position, name in enumerate(names):
        x0 = (position % per_row) * panel_w
        y_base = (position // per_row) * block_h
        series = []
        all_infinite = True
        for evaluation in evaluations:
            values = np.array([evaluation.rows[p].get(name, math.nan) for p in pairs if p in evaluation.rows])
            all_infinite &= bool(values.size) and bool(np.isinf(values).all())
            series.append(values[np.isfinite(values)])
        if all_infinite:
            note = "all inf (unchanged)"
            cv2.putText(
                sheet,
                note,
                (x0 + 60, y_base + top + panel_h // 2),
                cv2.FONT_HERSHEY_SIMPLEX,
                0.5,
                (0, 0, 0),
                1,
            )
        present = [s for s in series if s.size]
        low = min((s.min() for s in present), default=0.0)
        high = max((s.max() for s in present), default=1.0)
        if high - low < 1e-9:
            low, high = low - 0.5, high + 0.5

        def y_of(value: float, low: float = low, high: float = high, y_base: int = y_base) -> int:
            return int(y_base + top + panel_h - 10 - (value - low) / (high - low) * (panel_h - 20))

        cv2.putText(
            sheet, name, (x0 + 8, y_base + 24), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA
        )
        cv2.line(sheet, (x0 + 40, y_base + top), (x0 + 40, y_base + top + panel_h), (0, 0, 0), 1)
        for tick in (low, high):
            cv2.putText(
                sheet, f"{tick:.3g}", (x0 + 2, y_of(tick) + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (0, 0, 0), 1
            )
        width = (panel_w - 60) // max(1, len(series))
        for index, values in enumerate(series):
            colour = colours[index % len(colours)][::-1]
            cx = x0 + 50 + index * width + width // 2
            label = f"{index + 1}"
            label_y = y_base + top + panel_h + 20
            cv2.putText(sheet, label, (cx - 4, label_y), cv2.FONT_HERSHEY_SIMPLEX, 0.45, colour, 1)
            if values.size == 0:
                continue
            q1, med, q3 = np.percentile(values, [25, 50, 75])
            lo, hi = np.percentile(values, [10, 90])
            half = max(4, width // 3)
            cv2.line(sheet, (cx, y_of(lo)), (cx, y_of(hi)), colour, 1)
            cv2.rectangle(sheet, (cx - half, y_of(q3)), (cx + half, y_of(q1)), colour, 2)
            cv2.line(sheet, (cx - half, y_of(med)), (cx + half, y_of(med)), (0, 0, 0), 2)
    legend_y = block_h * rows_of_panels + 20
    for index, evaluation in enumerate(evaluations):
        colour = colours[index % len(colours)][::-1]
        text = f"{index + 1}: {evaluation.folder.name}"
        cv2.putText(sheet, text, (10 + 220 * index, legend_y), cv2.FONT_HERSHEY_SIMPLEX, 0.45, colour, 1)
    write_image_atomic(path, cv2.cvtColor(sheet, cv2.COLOR_BGR2RGB))


def summary_json_line(
    evaluations: Sequence[FolderEvaluation], pairs: Sequence[tuple[str, str]] | None
) -> str:
    """The whole evaluation as one JSON document (for --json)."""
    return json.dumps(to_json(evaluations, pairs), ensure_ascii=False)


def summary_tables(
    evaluations: Sequence[FolderEvaluation], pairs: Sequence[tuple[str, str]] | None
) -> list[Any]:
    """Rich tables: one per folder (mean, median, p10, p90, n per metric; set metrics last), then a
    side-by-side table of means when there are several folders."""
    from rich.markup import escape
    from rich.table import Table

    tables = []
    for evaluation in evaluations:
        table = Table(
            title=f"{escape(str(evaluation.folder))}: {len(evaluation.rows)} pairs", title_justify="left"
        )
        for column in ("metric", "mean", "median", "p10", "p90", "n"):
            table.add_column(column, justify="left" if column == "metric" else "right")
        for name, stats in evaluation.summary(pairs).items():
            arrow = "↑" if METRICS.get(name, ("", True))[1] else "↓"
            values = (f"{stats[k]:.4g}" for k in ("mean", "median", "p10", "p90"))
            table.add_row(f"{name} {arrow}", *values, str(stats["n"]))
        for name, value in evaluation.set_metrics.items():
            arrow = "↑" if SET_METRICS[name][1] else "↓"
            table.add_row(f"{name} {arrow}", f"{value:.4g}", "", "", "", "set")
        tables.append(table)
    if len(evaluations) > 1:
        table = Table(title=f"side by side over {len(pairs or [])} shared pairs (mean)", title_justify="left")
        table.add_column("metric")
        for evaluation in evaluations:
            table.add_column(escape(evaluation.folder.name), justify="right")
        summaries = [e.summary(pairs) for e in evaluations]
        for name in summaries[0]:
            table.add_row(name, *(f"{s.get(name, {}).get('mean', math.nan):.4g}" for s in summaries))
        for name in evaluations[0].set_metrics:
            table.add_row(name, *(f"{e.set_metrics.get(name, math.nan):.4g}" for e in evaluations))
        tables.append(table)
    return tables
