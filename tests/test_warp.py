"""Piecewise-affine landmark warp: accuracy on the landmarks, coverage, labels."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from shmt_cli.face.detect import default_detector
from shmt_cli.face.warp import (
    apply_warp,
    delaunay_triangles,
    extended_points,
    piecewise_affine_map,
    warp_to_landmarks,
)

SIZE = (256, 256)


@pytest.fixture(scope="module")
def astronaut_face(astronaut_rgb):
    """The astronaut resized to 256x256 with its dlib landmarks."""
    rgb = cv2.resize(astronaut_rgb, SIZE[::-1], interpolation=cv2.INTER_AREA)
    faces = default_detector().detect(rgb)
    assert faces, "dlib finds the astronaut's face"
    return rgb, faces[0].landmarks


def _moved(landmarks: np.ndarray) -> np.ndarray:
    """Another plausible geometry: rotated a few degrees, scaled, shifted, mouth widened, brows raised."""
    centre = landmarks.mean(axis=0)
    angle = np.deg2rad(6.0)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    moved = (landmarks - centre) @ rotation.T * 1.07 + centre + [4.0, -3.0]
    mouth_centre = moved[48:68].mean(axis=0)
    moved[48:68, 0] = mouth_centre[0] + (moved[48:68, 0] - mouth_centre[0]) * 1.2
    moved[17:27, 1] -= 3.0
    return moved


def _map_at(warp, points: np.ndarray) -> np.ndarray:
    """Bilinear read of the backward map at sub-pixel output positions: (N, 2) input positions."""
    read = [
        cv2.remap(plane, points[:, :1].astype(np.float32), points[:, 1:].astype(np.float32), cv2.INTER_LINEAR)
        for plane in (warp.map_x, warp.map_y)
    ]
    return np.hstack(read)


def test_map_sends_destination_landmarks_to_source_landmarks(astronaut_face):
    _, src = astronaut_face
    dst = _moved(src)
    warp = piecewise_affine_map(src, dst, SIZE)
    error = np.linalg.norm(_map_at(warp, dst) - src, axis=1)
    assert error.max() <= 1.5, f"worst landmark error {error.max():.2f} px"


def test_warped_dots_land_on_destination_landmarks(astronaut_face):
    _, src = astronaut_face
    dst = _moved(src)
    # Well separated landmarks: jaw ends, chin, brows, eye corners, nose tip, mouth corners.
    chosen = [0, 8, 16, 19, 24, 36, 45, 30, 48, 54]
    dots = np.zeros(SIZE, dtype=np.float32)
    for x, y in src[chosen]:
        cv2.circle(dots, (round(x * 16), round(y * 16)), 2 * 16, 1.0, -1, lineType=cv2.LINE_AA, shift=4)
    warped = warp_to_landmarks(dots, src, dst)
    ys, xs = np.mgrid[0 : SIZE[0], 0 : SIZE[1]]
    for x, y in dst[chosen]:
        near = (np.hypot(xs - x, ys - y) < 6) * warped
        assert near.sum() > 5, "the dot arrived near its landmark"
        centroid = np.array([(near * xs).sum(), (near * ys).sum()]) / near.sum()
        assert np.linalg.norm(centroid - [x, y]) <= 1.5


def test_identity_geometry_leaves_image_unchanged(astronaut_face):
    rgb, landmarks = astronaut_face
    warped = warp_to_landmarks(rgb, landmarks, landmarks)
    assert np.abs(warped.astype(int) - rgb).max() <= 1


def test_crop_border_stays_in_place(astronaut_face):
    _, src = astronaut_face
    warp = piecewise_affine_map(src, _moved(src), SIZE)
    height, width = SIZE
    ys, xs = np.mgrid[0:height, 0:width]
    border = (ys == 0) | (xs == 0) | (ys == height - 1) | (xs == width - 1)
    assert np.abs(warp.map_x - xs)[border].max() < 1.0
    assert np.abs(warp.map_y - ys)[border].max() < 1.0


def test_triangulation_covers_the_crop(astronaut_face):
    _, landmarks = astronaut_face
    points = extended_points(landmarks, SIZE)
    height, width = SIZE
    inside = (
        (points[:, 0] >= 0) & (points[:, 0] <= width - 1) & (points[:, 1] >= 0) & (points[:, 1] <= height - 1)
    )
    points = points[inside]
    triangles = delaunay_triangles(points, SIZE)
    corners = points[triangles]
    edge_a, edge_b = corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]
    area = 0.5 * np.abs(edge_a[:, 0] * edge_b[:, 1] - edge_a[:, 1] * edge_b[:, 0]).sum()
    assert area == pytest.approx((SIZE[0] - 1) * (SIZE[1] - 1), rel=1e-6)


def test_labels_warp_with_nearest_values(astronaut_face):
    _, src = astronaut_face
    labels = np.zeros(SIZE, dtype=np.uint8)
    cv2.fillPoly(labels, [np.round(src[48:60]).astype(np.int32)], 12)
    cv2.fillPoly(labels, [np.round(src[36:42]).astype(np.int32)], 4)
    warp = piecewise_affine_map(src, _moved(src), SIZE)
    warped = apply_warp(labels, warp, labels=True)
    assert set(np.unique(warped)) == {0, 4, 12}


def test_many_channels_warp_like_few(astronaut_face):
    rgb, src = astronaut_face
    warp = piecewise_affine_map(src, _moved(src), SIZE)
    stack = np.concatenate([rgb, rgb, rgb[..., :1]], axis=2).astype(np.float32)
    warped = apply_warp(stack, warp)
    assert warped.shape == stack.shape
    np.testing.assert_array_equal(warped[..., 3:6], apply_warp(rgb.astype(np.float32), warp))


def test_dev_photo_pairs_align_landmarks(faces_dir):
    detector = default_detector()
    stems = []
    for kind in ("non_makeup", "makeup"):
        path = sorted((faces_dir / kind / "images").iterdir())[0]
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        rgb = cv2.resize(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), SIZE[::-1], interpolation=cv2.INTER_AREA)
        stems.append(detector.detect(rgb)[0].landmarks)
    src, dst = stems[1], stems[0]
    warp = piecewise_affine_map(src, dst, SIZE)
    error = np.linalg.norm(_map_at(warp, dst) - src, axis=1)
    assert error.max() <= 1.5


def test_window_map_is_the_full_map_cropped(astronaut_face):
    _, src = astronaut_face
    dst = _moved(src)
    full = piecewise_affine_map(src, dst, SIZE)
    box = (40, 200, 30, 220)
    window = piecewise_affine_map(src, dst, SIZE, box=box)
    top, bottom, left, right = box
    assert window.size == (bottom - top, right - left)
    np.testing.assert_array_equal(window.map_x, full.map_x[top:bottom, left:right])
    np.testing.assert_array_equal(window.map_y, full.map_y[top:bottom, left:right])
