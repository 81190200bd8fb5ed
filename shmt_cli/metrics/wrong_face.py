"""Is a result's face the source's face? A flag for `shmt evaluate`.

A transfer onto a false detection (a "face" inside an iris of a photo turned sideways) paints makeup
where there is no face; its metrics look like any other pair's. On the aligned crop a real result
shows the source's face where the source's landmarks say it is. A pair is flagged when:

- no face is found in the result crop;
- the face found there fails the face-plausibility thresholds (face/plausibility.json: detector
  score, landmark shape, roll);
- its landmarks lie, on average, more than MAX_DISPLACEMENT eye-to-mouth spans from the source's
  (on the dev pairs the classic engine moves them by about 1 px, 0.015 spans; a different or
  shifted face moves them by tens of pixels);
- the source's own landmarks have an implausible shape or roll (a detection that was never a face).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from shmt_cli.face.detect import Face
from shmt_cli.face.plausibility import eye_mouth_span, implausible_reasons, measure_face

MAX_DISPLACEMENT = 0.25


def wrong_face_reasons(
    source_landmarks: np.ndarray, found: Sequence[Face], size: tuple[int, int]
) -> list[str]:
    """Why the result's face is not the source's ([] when it is).

    source_landmarks: (68, 2) float (x, y) on the crop; found: the detections in the result crop,
    best first; size: (width, height) of the crop.
    """
    reasons = []
    # The source landmarks have no detector score of their own here: only their geometry is judged.
    source = measure_face(source_landmarks, np.inf, size)
    shape = [r for r in implausible_reasons(source) if not r.startswith(("detector", "face size"))]
    reasons += [f"source face: {r}" for r in shape]
    if not found:
        return [*reasons, "no face found in the result"]
    span = max(eye_mouth_span(source_landmarks), 1e-6)
    nearest = min(
        found, key=lambda face: float(np.linalg.norm(face.landmarks - source_landmarks, axis=1).mean())
    )
    displacement = float(np.linalg.norm(nearest.landmarks - source_landmarks, axis=1).mean()) / span
    if displacement > MAX_DISPLACEMENT:
        reasons.append(f"result face {displacement:.2f} eye-to-mouth spans from the source's")
    reasons += [
        f"result face: {r}" for r in implausible_reasons(measure_face(nearest.landmarks, nearest.score, size))
    ]
    return reasons


def wrong_face(source_landmarks: np.ndarray, found: Sequence[Face], size: tuple[int, int]) -> float:
    """1.0 when `wrong_face_reasons` finds a reason, else 0.0 (its mean over pairs is the flagged share)."""
    return float(bool(wrong_face_reasons(source_landmarks, found, size)))
