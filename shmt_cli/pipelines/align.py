"""`shmt align`: photos in, MT-framed face crops plus sidecars out."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from shmt_cli.atomic import write_json_atomic
from shmt_cli.batch import BatchRunner, RunOptions, Summary, WorkItem
from shmt_cli.face.align import AlignedFace, crop_face
from shmt_cli.face.detect import FaceDetector, default_detector
from shmt_cli.face.search import FaceSearch, find_faces
from shmt_cli.imageio import InputError, read_image, write_image_atomic
from shmt_cli.inputs import collect_inputs, display_path, output_file, require_inputs
from shmt_cli.pipelines import refuse_output_as_input

# With --all-faces, further faces need a surer detection than the best one: real faces in the dev photos
# and test group photos score 0.67..2.75, while HOG false positives in clothing or backgrounds score ~0.1.
SECONDARY_FACE_MIN_SCORE = 0.3


@dataclass(frozen=True)
class AlignSettings:
    """Parameters that change `align` results."""

    size: int = 256
    all_faces: bool = False

    def as_params(self) -> dict[str, Any]:
        return {"size": self.size, "all_faces": self.all_faces}


def face_output_stem(stem: PurePosixPath, index: int, count: int) -> PurePosixPath:
    """`<stem>` for a single face, `<stem>_face<K>` (K from 1) when several faces are written."""
    return stem if count == 1 else stem.with_name(f"{stem.name}_face{index + 1}")


def align_photo(
    rgb: np.ndarray, source: str, settings: AlignSettings, detector: FaceDetector
) -> list[tuple[np.ndarray, AlignedFace]]:
    """Detect and align the faces of one photo: [(crop (size, size, 3) uint8, sidecar record)], best first."""
    return align_search(rgb, source, settings, detector)[0]


def align_search(
    rgb: np.ndarray, source: str, settings: AlignSettings, detector: FaceDetector
) -> tuple[list[tuple[np.ndarray, AlignedFace]], FaceSearch]:
    """align_photo plus the face search it made (plausible faces, quarter turn, rejected detections)."""
    search = find_faces(rgb, detector)
    faces = search.faces
    if not faces:
        raise InputError(search.failure())
    chosen = (
        [faces[0], *(f for f in faces[1:] if f.score >= SECONDARY_FACE_MIN_SCORE)]
        if settings.all_faces
        else faces[:1]
    )
    height, width = rgb.shape[:2]
    results = []
    for index, face in enumerate(chosen):
        record = AlignedFace.from_landmarks(
            face.landmarks,
            source_path=source,
            source_size=(width, height),
            score=face.score,
            face_index=index,
            crop_size=settings.size,
        )
        results.append((crop_face(rgb, record.matrix, settings.size), record))
    return results, search


def run_align(
    inputs: list[str], out_dir: Path, settings: AlignSettings, options: RunOptions
) -> tuple[BatchRunner, Summary]:
    """Align every photo found in `inputs` into `out_dir`."""
    refuse_output_as_input(out_dir, inputs)
    files = require_inputs(collect_inputs(inputs, exclude=[out_dir], optional=options.listed_inputs), inputs)
    items = [WorkItem(key=f.key, inputs=(f.path,), out_stem=f.rel, input_names=(f.rel,)) for f in files]
    runner = BatchRunner("align", out_dir, settings.as_params(), options)
    detector = default_detector()

    def process(item: WorkItem) -> tuple[list[Path], dict[str, Any]]:
        rgb = read_image(item.inputs[0])
        faces, search = align_search(rgb, display_path(Path(item.inputs[0]).resolve()), settings, detector)
        written: list[Path] = []
        for index, (crop, record) in enumerate(faces):
            stem = face_output_stem(item.out_stem, index, len(faces))
            image_path, sidecar_path = output_file(out_dir, stem, ".png"), output_file(out_dir, stem, ".json")
            write_image_atomic(image_path, crop)
            write_json_atomic(sidecar_path, record.to_json_dict())
            written += [image_path, sidecar_path]
        return written, {"faces": len(faces), **search.manifest_fields()}

    def done_outputs(item: WorkItem) -> list[Path]:
        return [output_file(out_dir, item.out_stem, ".png"), output_file(out_dir, item.out_stem, ".json")]

    summary = runner.run(items, process, done_outputs)
    return runner, summary
