"""Weight-free metrics: CIEDE2000 against published values, EMD, SSIM detail, PSNR, identity."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from shmt_cli.color import lab_to_rgb, rgb_to_lab
from shmt_cli.face.detect import default_detector
from shmt_cli.face.parsing import parse_face
from shmt_cli.metrics.weight_free import (
    SAME_PERSON_DISTANCE,
    background_psnr,
    ciede2000,
    content_preservation,
    emd_1d,
    face_mask,
    histogram_distance,
    identity_distance,
    landmark_displacement,
    makeup_fidelity,
    summarise,
)

# Test pairs published with the CIEDE2000 implementation notes of Sharma, Wu & Dalal (2005):
# (L1, a1, b1), (L2, a2, b2), ΔE00. They exercise the hue wrap-around and the achromatic cases.
SHARMA_PAIRS = [
    ((50.0000, 2.6772, -79.7751), (50.0000, 0.0000, -82.7485), 2.0425),
    ((50.0000, 3.1571, -77.2803), (50.0000, 0.0000, -82.7485), 2.8615),
    ((50.0000, 2.8361, -74.0200), (50.0000, 0.0000, -82.7485), 3.4412),
    ((50.0000, -1.3802, -84.2814), (50.0000, 0.0000, -82.7485), 1.0000),
    ((50.0000, 0.0000, 0.0000), (50.0000, -1.0000, 2.0000), 2.3669),
    ((50.0000, 2.4900, -0.0010), (50.0000, -2.4900, 0.0009), 7.1792),
    ((50.0000, 2.4900, -0.0010), (50.0000, -2.4900, 0.0011), 7.2195),
    ((50.0000, -0.0010, 2.4900), (50.0000, 0.0009, -2.4900), 4.8045),
    ((50.0000, -0.0010, 2.4900), (50.0000, 0.0011, -2.4900), 4.7461),
    ((50.0000, 2.5000, 0.0000), (50.0000, 0.0000, -2.5000), 4.3065),
    ((50.0000, 2.5000, 0.0000), (73.0000, 25.0000, -18.0000), 27.1492),
    ((50.0000, 2.5000, 0.0000), (61.0000, -5.0000, 29.0000), 22.8977),
    ((50.0000, 2.5000, 0.0000), (56.0000, -27.0000, -3.0000), 31.9030),
    ((50.0000, 2.5000, 0.0000), (58.0000, 24.0000, 15.0000), 19.4535),
]


def test_ciede2000_matches_published_pairs():
    first = np.array([pair[0] for pair in SHARMA_PAIRS])
    second = np.array([pair[1] for pair in SHARMA_PAIRS])
    expected = np.array([pair[2] for pair in SHARMA_PAIRS])
    np.testing.assert_allclose(ciede2000(first, second), expected, atol=1e-4)
    # Symmetric in its arguments.
    np.testing.assert_allclose(ciede2000(second, first), expected, atol=1e-4)


def test_ciede2000_matches_skimage_on_random_colours():
    skimage_color = pytest.importorskip("skimage.color")
    rng = np.random.default_rng(7)
    first = np.stack([rng.uniform(0, 100, 5000), rng.uniform(-90, 90, 5000), rng.uniform(-90, 90, 5000)], -1)
    second = first + rng.normal(0, 8, first.shape)
    np.testing.assert_allclose(
        ciede2000(first, second), skimage_color.deltaE_ciede2000(first, second), rtol=1e-9, atol=1e-9
    )
    assert ciede2000(first, first).max() == 0.0


def test_emd_of_a_shift_is_the_shift():
    rng = np.random.default_rng(1)
    samples = rng.normal(0, 5, 4000)
    assert emd_1d(samples, samples + 3.0) == pytest.approx(3.0, abs=1e-9)
    assert emd_1d(samples, samples) == 0.0
    assert math.isnan(emd_1d(samples, np.array([])))


@pytest.fixture(scope="module")
def face(astronaut_rgb):
    rgb = cv2.resize(astronaut_rgb, (256, 256), interpolation=cv2.INTER_AREA)
    landmarks = default_detector().detect(rgb)[0].landmarks
    return rgb, parse_face(rgb, landmarks), landmarks


def test_content_preservation_identical_noisy_and_blurred(face):
    rgb, labels, _ = face
    mask = face_mask(labels)
    assert content_preservation(rgb, rgb, mask) == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    noisy = np.clip(rgb + rng.normal(0, 12, rgb.shape), 0, 255).astype(np.uint8)
    blurred = cv2.GaussianBlur(rgb, (0, 0), 2.0)
    noisy_score = content_preservation(rgb, noisy, mask)
    blurred_score = content_preservation(rgb, blurred, mask)
    assert noisy_score < 0.9 and blurred_score < 0.6
    # A pure colour change (same lightness) keeps the detail.
    lab = rgb_to_lab(rgb)
    lab[..., 1] += 6.0 * mask
    recoloured = lab_to_rgb(lab)
    assert content_preservation(rgb, recoloured, mask) > max(noisy_score, blurred_score)


def test_background_psnr(face):
    rgb, labels, _ = face
    mask = face_mask(labels)
    assert background_psnr(rgb, rgb, mask) == math.inf
    changed = rgb.copy()
    changed[mask] = 0  # inside the face: the background score does not see it
    assert background_psnr(rgb, changed, mask) == math.inf
    shifted = np.clip(rgb.astype(int) + 4, 0, 255).astype(np.uint8)
    outside = ~mask
    mse = ((shifted[outside].astype(float) - rgb[outside]) ** 2).mean()
    assert background_psnr(rgb, shifted, mask) == pytest.approx(10 * math.log10(255**2 / mse))


def test_landmark_displacement():
    points = np.random.default_rng(3).uniform(0, 256, (68, 2))
    assert landmark_displacement(points, points) == 0.0
    assert landmark_displacement(points, points + np.array([3.0, 4.0])) == pytest.approx(5.0)


def test_makeup_fidelity_and_histograms_rank_the_reference_itself_best(face):
    rgb, labels, landmarks = face
    lab = rgb_to_lab(rgb)
    lips = np.isin(labels, (11, 12))
    lab[lips] = (45.0, 60.0, 30.0)
    made_up = lab_to_rgb(lab)
    fidelity_self = makeup_fidelity(made_up, labels, landmarks, made_up, labels, landmarks)
    fidelity_source = makeup_fidelity(rgb, labels, landmarks, made_up, labels, landmarks)
    assert fidelity_self["lips"] == pytest.approx(0.0, abs=0.2)
    assert fidelity_source["lips"] > 20.0
    assert fidelity_source["skin"] == pytest.approx(0.0, abs=0.5)  # only the lips differ
    histogram_self = histogram_distance(made_up, labels, landmarks, made_up, labels, landmarks)
    histogram_source = histogram_distance(rgb, labels, landmarks, made_up, labels, landmarks)
    assert histogram_self["lips"] == 0.0 and histogram_source["lips"] > 10.0


def test_identity_distance_same_face_and_recoloured(face):
    rgb, labels, landmarks = face
    assert identity_distance(rgb, landmarks, rgb, landmarks) < 1e-6
    lab = rgb_to_lab(rgb)
    lab[np.isin(labels, (11, 12))] = (45.0, 60.0, 30.0)
    assert identity_distance(rgb, landmarks, lab_to_rgb(lab), landmarks) < 0.3


def test_identity_distance_separates_people(faces_dir, face):
    rgb, _, landmarks = face
    path = sorted((faces_dir / "non_makeup" / "images").iterdir())[0]
    other = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    other_landmarks = default_detector().detect(other)[0].landmarks
    assert identity_distance(rgb, landmarks, other, other_landmarks) > SAME_PERSON_DISTANCE


def test_summarise_ignores_nan_and_keeps_inf():
    rows = [{"a": 1.0, "b": math.inf, "c": math.nan}, {"a": 3.0, "b": math.inf, "c": 2.0}]
    summary = summarise(rows)
    assert summary == {"a": 2.0, "b": math.inf, "c": 2.0}
