"""Alignment geometry: similarity fit, template framing, crops, sidecars and paste-back."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from shmt_cli.face.align import (
    AlignedFace,
    alignment_matrix,
    crop_face,
    default_face_mask,
    feathered_weight,
    invert_affine,
    matrix_scale,
    paste_back,
    read_sidecar,
    similarity_transform,
    transform_points,
    warp_affine,
)
from shmt_cli.face.detect import default_detector
from shmt_cli.face.template import MIRROR_INDEX, TEMPLATE_256, template_for_size

LEFT_EYE, RIGHT_EYE = slice(36, 42), slice(42, 48)


def similarity_matrix(angle: float, scale: float, tx: float, ty: float) -> np.ndarray:
    cos, sin = scale * math.cos(angle), scale * math.sin(angle)
    return np.array([[cos, -sin, tx], [sin, cos, ty]])


def mean_distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b, axis=1).mean())


@pytest.fixture(scope="module")
def astronaut_face(astronaut_rgb):
    faces = default_detector().detect(astronaut_rgb)
    assert faces, "dlib finds the astronaut's face"
    return faces[0]


# ---------------------------------------------------------------------------------------------
# similarity_transform, invert_affine, transform_points


@pytest.mark.parametrize("angle", [0.0, 0.4, -2.5, math.pi])
def test_similarity_transform_recovers_known_transform(angle):
    rng = np.random.default_rng(1)
    src = rng.uniform(0, 500, size=(68, 2))
    truth = similarity_matrix(angle, 0.37, 12.5, -80.25)
    estimate = similarity_transform(src, transform_points(src, truth))
    np.testing.assert_allclose(estimate, truth, atol=1e-9)


def test_similarity_transform_is_the_least_squares_optimum():
    # x' = a x - b y + tx, y' = b x + a y + ty is linear in (a, b, tx, ty): solve it independently.
    rng = np.random.default_rng(2)
    src = rng.uniform(0, 300, size=(40, 2))
    dst = transform_points(src, similarity_matrix(0.3, 1.7, 5.0, 9.0)) + rng.normal(0, 4.0, size=(40, 2))
    x, y = src[:, 0], src[:, 1]
    ones, zeros = np.ones_like(x), np.zeros_like(x)
    design = np.concatenate([np.stack([x, -y, ones, zeros], 1), np.stack([y, x, zeros, ones], 1)])
    (a, b, tx, ty), *_ = np.linalg.lstsq(design, np.concatenate([dst[:, 0], dst[:, 1]]), rcond=None)
    np.testing.assert_allclose(similarity_transform(src, dst), [[a, -b, tx], [b, a, ty]], atol=1e-8)


def test_similarity_transform_never_reflects_mirrored_points():
    rng = np.random.default_rng(3)
    src = rng.uniform(-50, 50, size=(68, 2))
    mirrored = src * [-1.0, 1.0]
    matrix = similarity_transform(src, mirrored)
    linear = matrix[:, :2]
    assert np.linalg.det(linear) > 0
    # A scaled rotation: equal diagonal, opposite off-diagonal (no shear, no reflection).
    assert linear[0, 0] == pytest.approx(linear[1, 1], abs=1e-12)
    assert linear[0, 1] == pytest.approx(-linear[1, 0], abs=1e-12)
    # The mirror cannot be reproduced, so a residual remains.
    assert mean_distance(transform_points(src, matrix), mirrored) > 5.0


def test_similarity_transform_rejects_degenerate_input():
    with pytest.raises(ValueError, match="same place"):
        similarity_transform(np.ones((5, 2)), np.zeros((5, 2)))
    with pytest.raises(ValueError, match="shape"):
        similarity_transform(np.zeros((5, 2)), np.zeros((4, 2)))


def test_invert_affine_composes_to_identity():
    matrix = similarity_matrix(1.1, 3.3, -40.0, 17.0)
    inverse = invert_affine(matrix)
    points = np.random.default_rng(4).uniform(-1000, 1000, size=(10, 2))
    np.testing.assert_allclose(transform_points(transform_points(points, matrix), inverse), points, atol=1e-9)
    with pytest.raises(ValueError, match="singular"):
        invert_affine(np.zeros((2, 3)))


def test_round_trip_on_real_landmarks(astronaut_face):
    landmarks = astronaut_face.landmarks
    matrix = alignment_matrix(landmarks, 256)
    inverse = invert_affine(matrix)
    to_crop = transform_points(landmarks, matrix)
    assert np.abs(transform_points(to_crop, inverse) - landmarks).max() < 0.5
    template = template_for_size(256)
    assert np.abs(transform_points(transform_points(template, inverse), matrix) - template).max() < 0.5


# ---------------------------------------------------------------------------------------------
# Template


def test_template_framing_is_mt_like():
    t = TEMPLATE_256
    assert t.shape == (68, 2) and t.dtype == np.float64
    left_eye, right_eye = t[LEFT_EYE].mean(axis=0), t[RIGHT_EYE].mean(axis=0)
    assert abs(left_eye[1] - right_eye[1]) < 0.5, "eyes level"
    assert abs(t[:, 0].mean() - 127.5) < 1.0, "face centred horizontally"
    mirrored = t[MIRROR_INDEX] * [-1.0, 1.0] + [255.0, 0.0]
    assert np.abs(mirrored - t).max() < 0.05, "left-right symmetric"
    inter_ocular = np.linalg.norm(right_eye - left_eye)
    assert 0.25 * 256 < inter_ocular < 0.35 * 256
    # Head and background, not a tight crop: margins at the sides and room above the brows for
    # forehead and hair (the eyes sit in the upper half, the chin above the bottom edge).
    assert t[:, 0].min() > 0.12 * 256 and t[:, 0].max() < 0.88 * 256
    assert t[17:27, 1].min() > 0.2 * 256
    assert left_eye[1] < 0.45 * 256
    assert t[8, 1] < 0.95 * 256


def test_template_for_size_scales_pixel_centres():
    np.testing.assert_array_equal(template_for_size(256), TEMPLATE_256)
    np.testing.assert_allclose(template_for_size(512), TEMPLATE_256 * 2 + 0.5)
    np.testing.assert_allclose(template_for_size(128), (TEMPLATE_256 - 0.5) / 2)


def _dev_photos(faces_dir: Path) -> list[tuple[Path, Path]]:
    pairs = []
    for image in sorted(faces_dir.glob("*/images/*")):
        seg = image.parent.parent / "seg" / f"{image.stem}.png"
        if seg.exists():
            pairs.append((image, seg))
    return pairs


def test_template_matches_dev_photo_framing(faces_dir):
    """Against the official parsing maps (independent of dlib): eye spacing and height, head in frame."""
    detector = default_detector()
    inter_oculars, eye_heights, head_inside = [], [], []
    photos = _dev_photos(faces_dir)
    assert len(photos) >= 10
    for image_path, seg_path in photos:
        rgb = cv2.cvtColor(cv2.imread(str(image_path)), cv2.COLOR_BGR2RGB)
        seg = cv2.imread(str(seg_path), cv2.IMREAD_GRAYSCALE)
        height, width = rgb.shape[:2]
        seg_256 = cv2.resize(seg, (256, 256), interpolation=cv2.INTER_NEAREST)
        eyes = [np.argwhere(seg_256 == label)[:, ::-1].mean(axis=0) for label in (4, 5)]
        inter_oculars.append(np.linalg.norm(eyes[0] - eyes[1]))
        eye_heights.append((eyes[0][1] + eyes[1][1]) / 2)
        # Head = everything but background, necklace, neck and clothes.
        seg_photo = cv2.resize(seg, (width, height), interpolation=cv2.INTER_NEAREST)
        head = np.argwhere(~np.isin(seg_photo, [0, 16, 17, 18]))[:, ::-1].astype(np.float64)
        matrix = alignment_matrix(detector.detect(rgb)[0].landmarks, 256)
        in_crop = transform_points(head, matrix)
        head_inside.append(float(((in_crop > -0.5) & (in_crop < 255.5)).all(axis=1).mean()))

    template_iod = np.linalg.norm(TEMPLATE_256[RIGHT_EYE].mean(axis=0) - TEMPLATE_256[LEFT_EYE].mean(axis=0))
    assert abs(template_iod / np.median(inter_oculars) - 1) < 0.08
    low, high = np.percentile(eye_heights, [10, 90])
    assert low - 4 <= TEMPLATE_256[36:48, 1].mean() <= high + 4
    assert np.median(head_inside) > 0.95
    assert min(head_inside) > 0.75


# ---------------------------------------------------------------------------------------------
# crop_face


def test_crop_of_astronaut_puts_landmarks_on_template(astronaut_rgb, astronaut_face):
    aligned = AlignedFace.from_landmarks(
        astronaut_face.landmarks, source_path="astronaut.png", source_size=(512, 512), score=1.0
    )
    crop = crop_face(astronaut_rgb, aligned.matrix, aligned.crop_size)
    assert crop.shape == (256, 256, 3) and crop.dtype == np.uint8
    faces = default_detector().detect(crop)
    assert faces
    redetected = faces[0].landmarks
    assert mean_distance(redetected, template_for_size(256)) < 8.0
    # Re-detection agrees with where the transform says the landmarks went.
    assert mean_distance(redetected, aligned.landmarks_crop) < 2.5


def _blob_image(center: tuple[float, float], sigma: float, shape: tuple[int, int]) -> np.ndarray:
    ys, xs = np.mgrid[0 : shape[0], 0 : shape[1]]
    blob = np.exp(-((xs - center[0]) ** 2 + (ys - center[1]) ** 2) / (2 * sigma**2))
    return np.repeat(np.rint(blob * 255).astype(np.uint8)[..., None], 3, axis=2)


def _centroid(gray: np.ndarray) -> np.ndarray:
    weights = gray.astype(np.float64)
    weights = np.where(weights > 0.05 * weights.max(), weights, 0)
    ys, xs = np.mgrid[0 : gray.shape[0], 0 : gray.shape[1]]
    return np.array([(xs * weights).sum(), (ys * weights).sum()]) / weights.sum()


@pytest.mark.parametrize("scale", [0.2, 0.6, 1.0, 2.5])
def test_crop_face_pixel_convention(scale):
    """A blob at a source point lands where transform_points says, through both warp paths."""
    center = (401.3, 377.8)
    photo = _blob_image(center, sigma=3.0 / scale, shape=(900, 800))
    crop_center = np.array([117.4, 140.6])
    linear = similarity_matrix(0.35, scale, 0, 0)
    matrix = linear.copy()
    matrix[:, 2] = crop_center - linear[:, :2] @ center
    crop = crop_face(photo, matrix, 256)
    np.testing.assert_allclose(_centroid(crop[..., 0]), crop_center, atol=0.25)


def test_crop_face_strong_downscale_does_not_alias():
    # One-pixel stripes average to mid gray; point sampling at 1/8 would pick whole stripes.
    stripes = np.zeros((2048, 2048, 3), dtype=np.uint8)
    stripes[:, ::2] = 255
    # Crop centre (80, 80) <- photo centre; the whole 160 px crop stays inside the photo.
    matrix = similarity_matrix(0.1, 1 / 8, 0.0, 0.0)
    matrix[:, 2] = 80.0 - matrix[:, :2] @ [1023.5, 1023.5]
    crop = crop_face(stripes, matrix, 160)
    inner = crop[20:-20, 20:-20].astype(np.float64)
    assert abs(inner.mean() - 127.5) < 3
    assert inner.std() < 3


def test_crop_face_fills_outside_with_black():
    photo = np.full((100, 100, 3), 200, dtype=np.uint8)
    crop = crop_face(photo, similarity_matrix(0.0, 1.0, 150.0, 0.0), 256)
    assert (crop[:, :140] == 0).all()
    assert (crop[5:95, 160:240] == 200).all()


# ---------------------------------------------------------------------------------------------
# Sidecar


def _aligned(astronaut_face) -> AlignedFace:
    return AlignedFace.from_landmarks(
        astronaut_face.landmarks,
        source_path="photos/astronaut.png",
        source_size=(512, 512),
        score=astronaut_face.score,
        face_index=0,
    )


def test_sidecar_round_trip(tmp_path, astronaut_face):
    aligned = _aligned(astronaut_face)
    path = tmp_path / "astronaut_0.json"
    path.write_text(json.dumps(aligned.to_json_dict()))
    loaded = read_sidecar(path)
    assert loaded.source_path == aligned.source_path
    assert loaded.source_size == (512, 512)
    assert loaded.crop_size == 256 and loaded.face_index == 0 and loaded.score == aligned.score
    np.testing.assert_array_equal(loaded.matrix, aligned.matrix)
    np.testing.assert_array_equal(loaded.landmarks_source, aligned.landmarks_source)
    np.testing.assert_array_equal(loaded.landmarks_crop, aligned.landmarks_crop)


def _without(data: dict, key: str) -> dict:
    return {k: v for k, v in data.items() if k != key}


@pytest.mark.parametrize(
    ("mutate", "problem"),
    [
        (lambda d: _without(d, "matrix"), "missing key(s): matrix"),
        (lambda d: {**d, "matrix": [[1.0, 0.0], [0.0, 1.0]]}, "'matrix' must have shape (2, 3)"),
        (lambda d: {**d, "landmarks_crop": d["landmarks_crop"][:67]}, "'landmarks_crop' must have shape"),
        (
            lambda d: {**d, "landmarks_source": [[float("nan"), 0.0]] * 68},
            "'landmarks_source' contains non-finite",
        ),
        (lambda d: {**d, "matrix": [[0.0, 0.0, 1.0], [0.0, 0.0, 2.0]]}, "'matrix' is singular"),
        (lambda d: {**d, "matrix": [["1", "0", "0"], ["0", "1", "0"]]}, "'matrix' must be a numeric array"),
        (lambda d: {**d, "landmarks_crop": [[1.0, 2.0], [3.0]] * 34}, "'landmarks_crop' must be a numeric"),
        (lambda d: {**d, "source_size": [512, -3]}, "'source_size' must be two positive integers"),
        (lambda d: {**d, "face_index": -1}, "'face_index' must be an integer >= 0"),
        (lambda d: {**d, "score": "high"}, "'score' must be a finite number"),
        (lambda d: {**d, "format": "other/9"}, "unsupported format"),
        (lambda d: [d], "expected a JSON object"),
    ],
)
def test_malformed_sidecar_raises_clear_error(tmp_path, astronaut_face, mutate, problem):
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(mutate(_aligned(astronaut_face).to_json_dict())))
    with pytest.raises(ValueError) as info:
        read_sidecar(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    assert problem in message


def test_sidecar_that_is_not_json(tmp_path):
    path = tmp_path / "truncated.json"
    path.write_text('{"format": "shmt-aligned-face/1", "matrix": [[1')
    with pytest.raises(ValueError, match=r"truncated\.json: not valid JSON"):
        read_sidecar(path)


# ---------------------------------------------------------------------------------------------
# Paste-back


def test_feathered_weight_is_zero_on_the_edge_and_one_inside():
    mask = np.zeros((100, 100), dtype=np.uint8)
    mask[20:80, 20:80] = 1
    weight = feathered_weight(mask, 10.0)
    assert weight.dtype == np.float32
    assert (weight[mask == 0] == 0).all()
    assert (weight[20, 20:80] == 0).all(), "outermost inside pixels have weight 0"
    assert (weight[31:69, 31:69] == 1).all()
    assert 0 < weight[25, 50] < 1


def test_paste_back_changes_only_inside_the_mask(astronaut_rgb, astronaut_face):
    matrix = alignment_matrix(astronaut_face.landmarks, 256)
    crop = crop_face(astronaut_rgb, matrix, 256)
    edited = 255 - crop
    mask = np.zeros((256, 256), dtype=np.uint8)
    cv2.circle(mask, (128, 140), 60, 1, thickness=-1)
    result = paste_back(astronaut_rgb, edited, matrix, crop_mask=mask, feather=0.04)
    assert result.shape == astronaut_rgb.shape and result.dtype == np.uint8

    # Every photo pixel's position in the crop, to compare against the circle independently.
    ys, xs = np.mgrid[0:512, 0:512]
    in_crop = transform_points(np.stack([xs.ravel(), ys.ravel()], 1).astype(np.float64), matrix)
    radius = np.linalg.norm(in_crop - [128, 140], axis=1).reshape(512, 512)
    changed = (result != astronaut_rgb).any(axis=2)
    # Outside the circle (plus a pixel of the photo, in crop units, for bilinear reach): untouched bytes.
    outside = radius > 60 + matrix_scale(matrix) + 1
    assert not changed[outside].any()
    # Deep inside (beyond the feather): the inverted crop shows.
    deep = radius < 60 - 0.04 * 256 - 3
    assert changed[deep].mean() > 0.99
    diff = np.abs(result.astype(int) - astronaut_rgb.astype(int))[deep]
    assert diff.mean() > 60


def test_paste_back_of_unchanged_crop_restores_the_photo(astronaut_rgb, astronaut_face):
    matrix = alignment_matrix(astronaut_face.landmarks, 256)
    crop = crop_face(astronaut_rgb, matrix, 256)
    landmarks_crop = transform_points(astronaut_face.landmarks, matrix)
    result = paste_back(astronaut_rgb, crop, matrix, landmarks_crop=landmarks_crop)
    changed = (result != astronaut_rgb).any(axis=2)
    assert changed.sum() > 1000, "the face region was rewritten"
    # The crop upsamples the face 1.8x; sending it back loses almost nothing at this scale.
    diff = np.abs(result.astype(int) - astronaut_rgb.astype(int))[changed]
    assert diff.mean() < 4.0


def test_paste_back_default_mask_covers_the_face_only(astronaut_rgb, astronaut_face):
    matrix = alignment_matrix(astronaut_face.landmarks, 256)
    black = np.zeros((256, 256, 3), dtype=np.uint8)
    result = paste_back(astronaut_rgb, black, matrix)
    changed = (result != astronaut_rgb).any(axis=2)
    nose = np.rint(astronaut_face.landmarks[30]).astype(int)
    assert changed[nose[1], nose[0]]
    # Sides and below the detector box stay untouched (the forehead legitimately extends above it).
    left, _top, right, bottom = astronaut_face.box
    assert not changed[:, : left - 40].any()
    assert not changed[:, right + 40 :].any()
    assert not changed[bottom + 40 :, :].any()
    # The default mask is the template hull raised over the forehead: it reaches above the brows.
    mask = default_face_mask(template_for_size(256), 256)
    assert mask[int(TEMPLATE_256[17:27, 1].min()) - 10, 128] == 1
    assert mask[5, 128] == 0 and mask[128, 5] == 0


@pytest.mark.parametrize("scale", [0.15, 0.6, 2.5])
def test_paste_back_matches_a_whole_photo_blend(scale):
    """Blending only inside the box gives the same photo as blending everywhere (nothing cut off)."""
    photo = np.random.default_rng(5).integers(0, 256, size=(700, 800, 3), dtype=np.uint8)
    matrix = similarity_matrix(0.3, scale, 0.0, 0.0)
    matrix[:, 2] = 128.0 - matrix[:, :2] @ [400.0, 350.0]
    white = np.full((256, 256, 3), 255, dtype=np.uint8)
    result = paste_back(photo, white, matrix, feather=0.04)

    weight_crop = feathered_weight(default_face_mask(template_for_size(256), 256), 0.04 * 256)
    weight = warp_affine(weight_crop, invert_affine(matrix), (800, 700), interpolation=cv2.INTER_LINEAR)
    expected = np.rint(photo + np.clip(weight, 0, 1)[..., None] * (255.0 - photo))
    assert np.abs(result - expected).max() <= 1
    assert (result != photo).any(axis=2).sum() > 1000


def test_paste_back_of_an_edit_keeps_the_photo_detail(astronaut_rgb, astronaut_face):
    # Photo upsampled 3x so the face is larger than the crop: an upsampled crop would be blurry.
    photo = cv2.resize(astronaut_rgb, (1536, 1536), interpolation=cv2.INTER_CUBIC)
    photo = np.clip(photo.astype(int) + np.random.default_rng(6).integers(-20, 21, photo.shape), 0, 255)
    photo = photo.astype(np.uint8)
    matrix = alignment_matrix(astronaut_face.landmarks * 3 + 1, 256)
    crop = crop_face(photo, matrix, 256)
    unchanged = paste_back(photo, crop, matrix, original_crop=crop)
    np.testing.assert_array_equal(unchanged, photo)

    brighter = np.clip(crop.astype(int) + 30, 0, 255).astype(np.uint8)
    result = paste_back(photo, brighter, matrix, original_crop=crop)
    nose = np.rint(astronaut_face.landmarks[30] * 3 + 1).astype(int)
    patch = (slice(nose[1] - 20, nose[1] + 20), slice(nose[0] - 20, nose[0] + 20))
    expected = np.clip(photo[patch].astype(int) + 30, 0, 255)
    # The photo's own per-pixel noise survives: the result is the photo plus the edit, not the crop.
    assert np.abs(result[patch].astype(int) - expected).mean() < 3
    replaced = paste_back(photo, brighter, matrix)
    assert np.abs(replaced[patch].astype(int) - expected).mean() > 5
