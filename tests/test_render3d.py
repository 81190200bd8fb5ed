"""Built-in 3D face render (shmt_cli.face.render3d): style, geometry, expression, pose, and agreement
with the 3DDFA_V2 renders of a few dev photos."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from shmt_cli.face.render3d import depth_normals, face_depth, fit_pose, render_face, shade
from shmt_cli.face.surface import CANONICAL_LANDMARKS, INNER_LIPS, canonical_landmarks_3d

SIZE = (256, 256)


def synthetic_landmarks(scale: float = 62.0, centre: tuple[float, float] = (128.0, 150.0)) -> np.ndarray:
    """A frontal, closed-mouth face: the canonical layout scaled into a 256x256 image."""
    return CANONICAL_LANDMARKS * scale + np.asarray(centre)


def open_mouth(landmarks: np.ndarray, drop: float) -> np.ndarray:
    """Lower lip and chin moved down by `drop` pixels (fading out along the jaw), as when talking."""
    opened = landmarks.copy()
    lower = [*range(55, 60), *range(65, 68), 57]
    opened[lower, 1] += drop
    jaw_weights = np.clip(1.0 - np.abs(np.arange(17) - 8) / 6.0, 0.0, 1.0)
    opened[:17, 1] += drop * jaw_weights
    return opened


def polygon_mask(points: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    mask = np.zeros(size_hw, np.uint8)
    cv2.fillPoly(mask, [np.round(points).astype(np.int32)], 1)
    return mask.astype(bool)


@pytest.fixture(scope="module")
def frontal_render() -> np.ndarray:
    return render_face(synthetic_landmarks(), SIZE)


def test_render_style_gray_on_exact_black(frontal_render: np.ndarray) -> None:
    assert frontal_render.shape == (*SIZE, 3) and frontal_render.dtype == np.uint8
    assert np.array_equal(frontal_render[..., 0], frontal_render[..., 1])
    assert np.array_equal(frontal_render[..., 0], frontal_render[..., 2])
    gray = frontal_render[..., 0]
    face = gray > 0
    # Sim3DR lighting: ambient 0.3 is the floor (76), a surface facing the light reaches ~255.
    assert gray[face].min() >= 60
    assert gray[face].max() >= 240
    assert np.percentile(gray[face], 5) < 170, "the sides should turn away from the light"
    # Corners of the canvas are far from the face: exactly zero.
    assert gray[:10, :10].max() == 0 and gray[-10:, -10:].max() == 0


def test_render_covers_landmark_hull_and_not_far_beyond(frontal_render: np.ndarray) -> None:
    landmarks = synthetic_landmarks()
    face = frontal_render[..., 0] > 0
    hull = polygon_mask(cv2.convexHull(landmarks.astype(np.float32))[:, 0], SIZE)
    mouth = polygon_mask(landmarks[INNER_LIPS], SIZE)
    covered = (face & hull).sum() / (hull & ~mouth).sum()
    assert covered > 0.98
    # Beyond the hull only the forehead (above the brows) and a thin margin along the jaw.
    ys, xs = np.nonzero(face)
    face_height = landmarks[8, 1] - landmarks[19, 1]
    assert ys.min() > landmarks[17:27, 1].min() - 0.9 * face_height
    assert ys.min() < landmarks[17:27, 1].min() - 0.2 * face_height
    assert ys.max() < landmarks[8, 1] + 0.06 * face_height
    width = landmarks[16, 0] - landmarks[0, 0]
    assert xs.min() > landmarks[0, 0] - 0.1 * width and xs.max() < landmarks[16, 0] + 0.1 * width
    assert face.sum() < 1.5 * hull.sum()


def test_nose_tip_is_nearest_and_brighter_than_the_border(frontal_render: np.ndarray) -> None:
    landmarks = synthetic_landmarks()
    depth, mask = face_depth(landmarks, SIZE)
    tip_x, tip_y = np.round(landmarks[30]).astype(int)
    border = mask & ~cv2.erode(mask.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
    assert depth[tip_y, tip_x] > depth[border].max()
    assert depth[tip_y, tip_x] >= np.percentile(depth[mask], 99)
    gray = frontal_render[..., 0].astype(float)
    assert gray[tip_y - 2 : tip_y + 3, tip_x - 2 : tip_x + 3].mean() > gray[border].mean() + 40


def test_shade_follows_the_lighting_model() -> None:
    mask = np.ones((1, 3), bool)
    tilt = np.sin(np.radians(60.0))
    normals = np.array([[[0.0, 0.0, 1.0], [tilt, 0.0, 0.5], [1.0, 0.0, 0.0]]], np.float32)
    light = shade(normals, mask)[0]
    # Facing the light: ambient + diffuse + specular; 60 degrees: 0.3 + 0.6 * 0.5 (reflection misses
    # the viewer); edge-on: ambient only.
    np.testing.assert_allclose(light, [1.0, 0.6, 0.3], atol=1e-5)


def test_open_mouth_follows_landmarks(frontal_render: np.ndarray) -> None:
    opened_landmarks = open_mouth(synthetic_landmarks(), drop=14.0)
    opened = render_face(opened_landmarks, SIZE)[..., 0]
    inner_mouth = polygon_mask(opened_landmarks[INNER_LIPS], SIZE)
    assert inner_mouth.sum() > 150
    assert opened[inner_mouth].max() == 0, "the inner mouth is not part of the surface"
    changed = np.abs(opened.astype(int) - frontal_render[..., 0].astype(int)) > 8
    assert changed.sum() > 400
    # The chin moved down with the landmarks.
    assert np.nonzero(opened > 0)[0].max() > np.nonzero(frontal_render[..., 0] > 0)[0].max() + 5


def test_pose_recovers_yaw_and_roll() -> None:
    model = canonical_landmarks_3d()
    yaw, roll = np.radians(20.0), np.radians(-10.0)
    rot_yaw = np.array([[np.cos(yaw), 0, np.sin(yaw)], [0, 1, 0], [-np.sin(yaw), 0, np.cos(yaw)]])
    rot_roll = np.array([[np.cos(roll), -np.sin(roll), 0], [np.sin(roll), np.cos(roll), 0], [0, 0, 1]])
    rotation = rot_roll @ rot_yaw
    landmarks = 70.0 * model @ rotation[:2].T + [120.0, 130.0]
    pose = fit_pose(landmarks)
    found_yaw, found_pitch, found_roll = pose.angles_deg()
    assert abs(found_yaw - 20.0) < 1.0 and abs(found_pitch) < 1.0 and abs(found_roll + 10.0) < 1.0
    assert abs(pose.scale - 70.0) < 0.5


def test_yawed_face_darkens_the_far_side() -> None:
    model = canonical_landmarks_3d()
    yaw = np.radians(25.0)
    rotation = np.array([[np.cos(yaw), 0, np.sin(yaw)], [0, 1, 0], [-np.sin(yaw), 0, np.cos(yaw)]])
    landmarks = 62.0 * model @ rotation[:2].T + [128.0, 150.0]
    gray = render_face(landmarks, SIZE)[..., 0].astype(float)
    nose_x = landmarks[30, 0]
    rows = slice(int(landmarks[36, 1]), int(landmarks[8, 1]) - 20)
    band = gray[rows]
    left = band[:, : int(nose_x)][band[:, : int(nose_x)] > 0].mean()
    right = band[:, int(nose_x) :][band[:, int(nose_x) :] > 0].mean()
    assert abs(left - right) > 5


# Regression floors a little below what these photos reach (IoU 0.92-0.97, correlation 0.89-0.92;
# see tools/render3d_agreement.py).
IOU_FLOOR = 0.90
CORR_FLOOR = 0.86


def _agreement(ours: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    a, b = ours > 10, reference > 10
    both = a & b
    iou = both.sum() / (a | b).sum()
    corr = np.corrcoef(ours[both].astype(float), reference[both].astype(float))[0, 1]
    return float(iou), float(corr)


@pytest.mark.parametrize("stem", ["non_makeup/00305", "non_makeup/00434", "makeup/vFG25", "makeup/00012"])
def test_agrees_with_3ddfa_renders_on_dev_photos(faces_dir, stem: str) -> None:
    from shmt_cli.face.detect import default_detector

    group, name = stem.split("/")
    photo = next((faces_dir / group / "images").glob(f"{name}.*"))
    reference = cv2.imread(str(faces_dir / group / "3d" / f"{name}_3d.jpg"), cv2.IMREAD_GRAYSCALE)
    rgb = cv2.imread(str(photo), cv2.IMREAD_COLOR)[..., ::-1].copy()
    landmarks = default_detector().detect(rgb)[0].landmarks
    iou, corr = _agreement(render_face(landmarks, reference.shape)[..., 0], reference)
    assert iou > IOU_FLOOR, f"silhouette IoU {iou:.3f}"
    assert corr > CORR_FLOOR, f"gray correlation {corr:.3f}"


def test_large_face_is_rendered_like_a_small_one() -> None:
    small = render_face(synthetic_landmarks(), SIZE)[..., 0]
    big = render_face(synthetic_landmarks(scale=62.0 * 4, centre=(512.0, 600.0)), (1024, 1024))[..., 0]
    assert big[:20, :20].max() == 0 and big[big > 0].min() >= 60
    shrunk = cv2.resize(big, SIZE[::-1], interpolation=cv2.INTER_AREA)
    both = (small > 0) & (shrunk > 0) & (cv2.erode((small > 0).astype(np.uint8), np.ones((5, 5))) > 0)
    assert both.sum() > 0.8 * (small > 0).sum()
    assert np.corrcoef(small[both].astype(float), shrunk[both].astype(float))[0, 1] > 0.95


def test_face_cut_by_the_border_and_face_off_canvas() -> None:
    cut = render_face(synthetic_landmarks(centre=(20.0, 150.0)), SIZE)[..., 0]
    assert (cut[:, :5] > 0).any() and cut[cut > 0].min() >= 60
    assert (cut > 0).sum() > 3000
    off = render_face(synthetic_landmarks(centre=(-400.0, -400.0)), SIZE)
    assert off.max() == 0


def test_normals_ignore_the_far_edge_of_the_canvas() -> None:
    # A plane tilted along x that fills the canvas: np.roll-style wrap-around would bend the
    # normals in the first and last columns.
    depth = np.tile(np.arange(8, dtype=np.float32) * 0.5, (6, 1))
    normals = depth_normals(depth, np.ones_like(depth, bool))
    np.testing.assert_allclose(normals[..., 0], -0.5 / np.sqrt(1.25), atol=1e-6)
    np.testing.assert_allclose(normals[..., 1], 0.0, atol=1e-6)
