"""Finding the faces of a photo that are plausibly faces, in whichever quarter turn they stand.

The photo is searched upright first; unless a plausible face there is also confidently a face (see
``face.plausibility``), it is searched turned by 90, 180 and 270 degrees too, and the turn with the
best plausible face wins. Faces are returned in the coordinates of the photo *as it was*: aligning with
their landmarks turns the crop upright, and pasting the result back through the same matrix puts it
into the unturned photo.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from shmt_cli.face.detect import Face, FaceDetector, default_detector
from shmt_cli.face.plausibility import (
    Confident,
    FaceMeasures,
    Thresholds,
    fitted_confident,
    implausible_reasons,
    measure_face,
    rank_value,
)
from shmt_cli.face.rotation import ROTATIONS, rotate_image, unrotate_points


@dataclass(frozen=True)
class Rejected:
    """A detection not taken for a face: where it was searched and why."""

    rotation: int
    measures: FaceMeasures
    reasons: list[str]


@dataclass(frozen=True)
class FaceSearch:
    """What a search found: plausible faces (best first, photo coordinates), the turn that found them
    (degrees counter-clockwise, 0 upright), their measures, and the detections rejected on the way."""

    faces: list[Face]
    rotation: int = 0
    measures: list[FaceMeasures] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    rotations_searched: tuple[int, ...] = (0,)

    def failure(self) -> str:
        """The one-line reason no face could be used (for an item that fails)."""
        notes = []
        if self.rejected:
            count = len(self.rejected)
            notes.append(
                f"{count} detection{'s' if count != 1 else ''} rejected as implausible, "
                f"e.g. {', '.join(self.rejected[0].reasons)}"
            )
        if len(self.rotations_searched) > 1:
            notes.append("also searched turned 90/180/270°")
        return f"no face found ({'; '.join(notes)})" if notes else "no face found"

    def manifest_fields(self) -> dict[str, object]:
        """What the search did, for the manifest and the --json item line."""
        fields: dict[str, object] = {"faces_found": len(self.faces)}
        if self.rotation:
            fields["rotation"] = self.rotation
        if self.rejected:
            fields["detections_rejected"] = len(self.rejected)
        return fields


def _to_photo(face: Face, rotation: int, shape: tuple[int, ...]) -> Face:
    if rotation == 0:
        return face
    landmarks = unrotate_points(face.landmarks, rotation, shape)
    left, top, right, bottom = face.box
    corners = unrotate_points(np.array([[left, top], [right, bottom]], dtype=np.float64), rotation, shape)
    low, high = corners.min(axis=0), corners.max(axis=0)
    box = (round(low[0]), round(low[1]), round(high[0]), round(high[1]))
    return Face(box=box, score=face.score, landmarks=landmarks)


def find_faces(
    rgb: np.ndarray,
    detector: FaceDetector | None = None,
    thresholds: Thresholds | None = None,
    try_rotations: bool = True,
    confident: Confident | None = None,
) -> FaceSearch:
    """Plausible faces of an (H, W, 3) uint8 RGB photo, in the quarter turn that shows them best.

    The upright photo is searched first; a plausible face there that is also *confident* (score and
    size, see plausibility.Confident) ends the search. Otherwise the three other turns are searched too
    and the turn holding the best plausible face (rank_value: size and score) wins: a false face in an
    eye of a sideways photo loses to the real face found in the turn that stands it upright.
    """
    detector = detector or default_detector()
    sure = confident or fitted_confident()
    rejected: list[Rejected] = []
    found: dict[int, list[tuple[Face, FaceMeasures]]] = {}
    searched: list[int] = []
    for rotation in ROTATIONS if try_rotations else (0,):
        turned = rotate_image(rgb, rotation) if rotation else rgb
        searched.append(rotation)
        size = (turned.shape[1], turned.shape[0])
        kept: list[tuple[Face, FaceMeasures]] = []
        for face in detector.detect(turned):
            measures = measure_face(face.landmarks, face.score, size)
            reasons = implausible_reasons(measures, thresholds)
            if reasons:
                rejected.append(Rejected(rotation, measures, reasons))
            else:
                kept.append((_to_photo(face, rotation, rgb.shape), measures))
        kept.sort(key=lambda pair: rank_value(pair[1]), reverse=True)
        found[rotation] = kept
        if rotation == 0 and any(sure.holds(m) for _, m in kept):
            break
    best = max(
        (rotation for rotation in found if found[rotation]),
        key=lambda rotation: rank_value(found[rotation][0][1]),
        default=None,
    )
    if best is None:
        return FaceSearch(faces=[], rejected=rejected, rotations_searched=tuple(searched))
    return FaceSearch(
        faces=[face for face, _ in found[best]],
        rotation=best,
        measures=[m for _, m in found[best]],
        rejected=rejected,
        rotations_searched=tuple(searched),
    )
