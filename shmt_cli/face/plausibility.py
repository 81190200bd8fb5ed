"""Is a detection a face? Measures of one detection and the thresholds that accept it.

dlib's HOG detector fires on face-like texture (an iris, a knot in wood) and its shape predictor
then draws a face-shaped set of 68 points there anyway, so a detection alone is not trusted. Three
measures are taken, each cheap (no extra network):

- ``score``: the HOG detector's margin;
- ``relative_size``: the landmarks' eye-to-mouth span over the photo's short side (a face of a few
  percent of the photo inside a larger, undetected face is what a false hit in an eye looks like);
- ``shape_error``: rms distance of the landmarks to the face template after the best similarity
  fit, in units of the template's eye-to-mouth span (the predictor's points scatter off the face
  shape when there is no face to fit);
- ``roll_degrees``: rotation of that fit (HOG only finds faces within about ±40° of upright, so a
  face "found" lying on its side is a texture).

The thresholds live in ``plausibility.json`` beside this module, written by
``tools/fit_face_plausibility.py`` (its docstring states the objective and the data).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

import numpy as np

from shmt_cli.face.template import TEMPLATE_256

THRESHOLDS_FILE = "plausibility.json"

# Eye centres and mouth centre of the 68-point scheme: the face's own frame.
LEFT_EYE = slice(36, 42)
RIGHT_EYE = slice(42, 48)
MOUTH = slice(48, 68)


def eye_mouth_span(landmarks: np.ndarray) -> float:
    """Distance (px) from the midpoint of the eyes to the mouth centre plus the eye distance, halved:
    a size measure that does not depend on the face's roll. landmarks: (68, 2) float (x, y)."""
    points = np.asarray(landmarks, dtype=np.float64)
    left, right = points[LEFT_EYE].mean(axis=0), points[RIGHT_EYE].mean(axis=0)
    mouth = points[MOUTH].mean(axis=0)
    eyes = (left + right) / 2.0
    return float(np.linalg.norm(mouth - eyes) + np.linalg.norm(right - left)) / 2.0


_TEMPLATE_SPAN = eye_mouth_span(TEMPLATE_256)


@dataclass(frozen=True)
class FaceMeasures:
    """What is measured of one detection (see the module docstring)."""

    score: float
    relative_size: float
    shape_error: float
    roll_degrees: float

    def to_json_dict(self) -> dict[str, float]:
        return {key: round(value, 4) for key, value in asdict(self).items()}


def measure_face(landmarks: np.ndarray, score: float, image_size: tuple[int, int]) -> FaceMeasures:
    """Measures of one detection. landmarks: (68, 2) float (x, y) px; image_size: (width, height)."""
    points = np.asarray(landmarks, dtype=np.float64)
    if points.shape != (68, 2):
        raise ValueError(f"expected (68, 2) landmarks, got {points.shape}")
    centred = points - points.mean(axis=0)
    target = TEMPLATE_256 - TEMPLATE_256.mean(axis=0)
    # Best similarity taking the landmarks onto the template (proper rotation, no reflection).
    covariance = target.T @ centred
    u, singular, vt = np.linalg.svd(covariance)
    sign = np.array([1.0, 1.0 if np.linalg.det(u) * np.linalg.det(vt) >= 0 else -1.0])
    rotation = u @ np.diag(sign) @ vt
    spread = float((centred**2).sum())
    scale = float((singular * sign).sum()) / spread if spread > 1e-9 else 0.0
    fitted = scale * centred @ rotation.T
    rms = math.sqrt(float(((fitted - target) ** 2).sum(axis=1).mean())) if scale > 0 else math.inf
    roll = math.degrees(math.atan2(rotation[1, 0], rotation[0, 0]))
    short_side = max(1, min(int(image_size[0]), int(image_size[1])))
    return FaceMeasures(
        score=float(score),
        relative_size=eye_mouth_span(points) / short_side,
        shape_error=rms / _TEMPLATE_SPAN,
        roll_degrees=roll,
    )


@dataclass(frozen=True)
class Thresholds:
    """A detection is plausible when every measure is on the right side of its threshold."""

    min_score: float
    min_relative_size: float
    max_shape_error: float
    max_abs_roll_degrees: float

    @classmethod
    def from_json_dict(cls, data: dict[str, Any]) -> Thresholds:
        return cls(**{key: float(data[key]) for key in cls.__dataclass_fields__})


@dataclass(frozen=True)
class Confident:
    """An upright detection this sure (score and size both at least these) is taken without searching
    the photo's other quarter turns; below, every turn is searched and the best face of all wins."""

    min_score: float
    min_relative_size: float

    def holds(self, measures: FaceMeasures) -> bool:
        return measures.score >= self.min_score and measures.relative_size >= self.min_relative_size


def rank_value(measures: FaceMeasures) -> float:
    """Which face is the photo's subject: bigger and surer first (as face.detect ranks them)."""
    return measures.relative_size * (1.0 + min(max(measures.score, 0.0), 2.0))


@lru_cache(maxsize=1)
def _fitted() -> dict[str, Any]:
    return json.loads(resources.files("shmt_cli.face").joinpath(THRESHOLDS_FILE).read_text("utf-8"))


def fitted_thresholds() -> Thresholds:
    """The thresholds written by tools/fit_face_plausibility.py."""
    return Thresholds.from_json_dict(_fitted()["thresholds"])


def fitted_confident() -> Confident:
    """The confident region written by tools/fit_face_plausibility.py."""
    data = _fitted().get("confident", {"min_score": math.inf, "min_relative_size": math.inf})
    return Confident(float(data["min_score"]), float(data["min_relative_size"]))


def implausible_reasons(measures: FaceMeasures, thresholds: Thresholds | None = None) -> list[str]:
    """Why a detection is not taken for a face ([] when it is plausible)."""
    limits = thresholds or fitted_thresholds()
    reasons = []
    if measures.score < limits.min_score:
        reasons.append(f"detector score {measures.score:.2f} < {limits.min_score:.2f}")
    if measures.relative_size < limits.min_relative_size:
        reasons.append(
            f"face size {measures.relative_size:.3f} of the photo < {limits.min_relative_size:.3f}"
        )
    if measures.shape_error > limits.max_shape_error:
        reasons.append(f"landmark shape error {measures.shape_error:.3f} > {limits.max_shape_error:.3f}")
    if abs(measures.roll_degrees) > limits.max_abs_roll_degrees:
        reasons.append(f"roll {measures.roll_degrees:.0f}° beyond ±{limits.max_abs_roll_degrees:.0f}°")
    return reasons
