"""The classic engine: region control, protected pixels, strength, texture level, colour transfer."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from shmt_cli.color import lab_to_rgb, rgb_to_lab
from shmt_cli.engines.classic import (
    REGIONS,
    ClassicParams,
    eye_shadow_mask,
    fine_details,
    prepare_reference,
    prepare_source,
    region_masks,
    specular_highlights,
    transfer_prepared,
)
from shmt_cli.face.detect import default_detector
from shmt_cli.face.parsing import parse_face
from shmt_cli.metrics.weight_free import ciede2000, makeup_fidelity

SIZE = 256
PROTECTED_LABELS = (0, 3, 4, 5, 10, 13, 14, 15, 16, 18)
LIP_LAB = (45.0, 62.0, 35.0)
SHADOW_LAB = (55.0, 5.0, -40.0)
PATTERN_PERIOD = 4.0


def transfer_classic(
    src_rgb: np.ndarray,
    src_labels: np.ndarray,
    src_landmarks: np.ndarray,
    ref_rgb: np.ndarray,
    ref_labels: np.ndarray,
    ref_landmarks: np.ndarray,
    params: ClassicParams | None = None,
) -> np.ndarray:
    """One pair, prepared and transferred (test helper)."""
    source = prepare_source(src_rgb, src_labels, src_landmarks)
    reference = prepare_reference(ref_rgb, ref_labels, ref_landmarks)
    return transfer_prepared(source, reference, params)


def transfer_many(sources, reference, params: ClassicParams | None = None) -> list[np.ndarray]:
    """`transfer_prepared` for each prepared source against one prepared reference (test helper)."""
    return [transfer_prepared(source, reference, params) for source in sources]


@pytest.fixture(scope="module")
def source(astronaut_rgb):
    """The astronaut as a 256x256 crop: (rgb, labels, landmarks)."""
    rgb = cv2.resize(astronaut_rgb, (SIZE, SIZE), interpolation=cv2.INTER_AREA)
    landmarks = default_detector().detect(rgb)[0].landmarks
    return rgb, parse_face(rgb, landmarks), landmarks


@pytest.fixture(scope="module")
def reference(source):
    """The same face 'made up': red lips, blue eye shadow, a fine painted grating over the skin.

    Returns (rgb, labels, landmarks, pattern) with pattern the (H, W) grating added to L (L units).
    """
    rgb, labels, landmarks = source
    lab = rgb_to_lab(rgb)
    lips = np.isin(labels, (11, 12))
    lab[lips] = LIP_LAB
    shadow = eye_shadow_mask(landmarks, labels.shape) & (labels == 1)
    lab[shadow] = 0.5 * lab[shadow] + 0.5 * np.array(SHADOW_LAB)
    xs = np.arange(SIZE)[None, :] + np.zeros((SIZE, 1))
    pattern = 8.0 * np.sin(2 * np.pi * xs / PATTERN_PERIOD) * (labels == 1)
    lab[..., 0] = np.clip(lab[..., 0] + pattern, 0, 100)
    return lab_to_rgb(lab), labels, landmarks, pattern


def _transfer(source, reference, **params):
    return transfer_classic(*source, *reference[:3], ClassicParams(**params))


def _fine(rgb: np.ndarray) -> np.ndarray:
    lightness = rgb_to_lab(rgb)[..., 0].astype(np.float64)
    return lightness - cv2.GaussianBlur(lightness, (0, 0), 1.5)


def test_lab_round_trip_and_accuracy(source):
    skimage_color = pytest.importorskip("skimage.color")
    rgb = source[0]
    lab = rgb_to_lab(rgb)
    assert np.abs(lab - skimage_color.rgb2lab(rgb)).max() < 1e-2
    np.testing.assert_array_equal(lab_to_rgb(lab), rgb)


def test_strength_zero_is_bit_exact(source, reference):
    zero = {name: 0.0 for name in REGIONS}
    np.testing.assert_array_equal(_transfer(source, reference, strengths=zero), source[0])
    np.testing.assert_array_equal(_transfer(source, reference, regions=frozenset()), source[0])


@pytest.mark.parametrize("level", ["h0", "h4"])
def test_protected_pixels_untouched(source, reference, level):
    result = _transfer(source, reference, level=level)
    protected = np.isin(source[1], PROTECTED_LABELS)
    assert (source[1] == 4).any() and (source[1] == 5).any(), "the parser found both eyes"
    np.testing.assert_array_equal(result[protected], source[0][protected])
    assert (result != source[0]).any(axis=2).sum() > 1000, "the face did change"


@pytest.mark.parametrize("region", REGIONS)
def test_single_region_changes_only_near_that_region(source, reference, region):
    result = _transfer(source, reference, level="h4", regions=frozenset({region}))
    changed = (result != source[0]).any(axis=2)
    hard = region_masks(source[1], source[2])[region] > 0
    # The feathered border reaches 4 sigma (at most 0.035 face widths, ~5 px) beyond the region.
    near = cv2.dilate(hard.astype(np.uint8), np.ones((17, 17), np.uint8)) > 0
    assert changed.any()
    assert not (changed & ~near).any(), f"{(changed & ~near).sum()} pixels changed away from {region}"


def test_lips_and_eye_shadow_take_the_reference_colour(source, reference):
    result = _transfer(source, reference, level="h0")
    lips = np.isin(source[1], (11, 12))
    before = ciede2000(rgb_to_lab(source[0])[lips], LIP_LAB).mean()
    after = ciede2000(rgb_to_lab(result)[lips], LIP_LAB).mean()
    assert after < 0.4 * before, (before, after)
    shadow = eye_shadow_mask(source[2], source[1].shape) & (source[1] == 1)
    ref_lab, src_lab, res_lab = (rgb_to_lab(image)[shadow] for image in (reference[0], source[0], result))
    # Not all the way: at h0 the fine grating painted over the reference skin is not transferred.
    assert np.median(ciede2000(res_lab, ref_lab)) < 0.6 * np.median(ciede2000(src_lab, ref_lab))


def test_h4_lets_reference_texture_through_and_h0_keeps_source_texture(source, reference):
    pattern = reference[3]
    # Skin well inside its borders and outside the eye-shadow area, where only the grating differs.
    skin = cv2.erode((source[1] == 1).astype(np.uint8), np.ones((9, 9), np.uint8)) > 0
    skin &= ~eye_shadow_mask(source[2], source[1].shape)
    correlation = {}
    for level in ("h0", "h2", "h4"):
        detail = _fine(_transfer(source, reference, level=level))
        correlation[level] = np.corrcoef(detail[skin], pattern[skin])[0, 1]
    assert correlation["h0"] < 0.1
    # Not 1: the reference's texture fades in over a few pixels inside its skin border. The measured
    # skin is small (~140 px at this size), so its outline moves the figure: the nose network's one
    # pixel wider nostril took a 7 px column out of it, 0.71 -> 0.68 with the transfer unchanged (on
    # the pixels both parses keep: 0.677 before, 0.679 after). The lips network's thinner lips added 18
    # px of skin near the mouth, 0.679 -> 0.647 (on the 141 px both parses keep: 0.679 -> 0.682). The
    # face region's boundary re-decided at full resolution moved 8 of its ~2060 px (this face is small
    # here) and with them the region statistics of the transfer: 0.646 -> 0.639 on the same 160 skin px.
    assert correlation["h4"] > 0.6
    assert correlation["h0"] < correlation["h2"] <= correlation["h4"] + 0.05
    h0_detail = _fine(_transfer(source, reference, level="h0"))
    assert np.corrcoef(h0_detail[skin], _fine(source[0])[skin])[0, 1] > 0.95


def test_skin_tone_does_not_follow_the_ears(source, reference):
    # A dark block beside the face, labelled ear in one parse and background in the other: the ears are
    # painted at half weight, but the skin's tone is not measured on them, so away from the block the
    # two results are the same (counted, the block darkened the source's mean and brightened the face).
    rgb, labels, landmarks = source
    rgb = rgb.copy()
    rows, cols = np.nonzero(np.isin(labels, (1, 2)))
    top, left = int(rows.mean()) - 20, int(cols.min()) - 24
    block = (slice(top, top + 40), slice(left, left + 20))
    rgb[block] = (40, 30, 25)
    as_ear, as_background = labels.copy(), labels.copy()
    as_ear[block], as_background[block] = 9, 0
    with_ear = transfer_classic(rgb, as_ear, landmarks, *reference[:3], ClassicParams(level="h0"))
    without = transfer_classic(rgb, as_background, landmarks, *reference[:3], ClassicParams(level="h0"))
    near = np.zeros(labels.shape, np.uint8)
    near[block] = 1
    near = cv2.dilate(near, np.ones((25, 25), np.uint8)) > 0
    skin = np.isin(labels, (1, 2)) & ~near
    assert skin.sum() > 800
    assert (with_ear[block] != without[block]).any(), "the ear is painted"
    np.testing.assert_array_equal(with_ear[skin], without[skin])


def test_strength_scales_the_change(source, reference):
    lips = np.isin(source[1], (11, 12))
    deltas = []
    for strength in (0.25, 0.5, 1.0):
        result = _transfer(source, reference, regions=frozenset({"lips"}), strengths={"lips": strength})
        deltas.append(ciede2000(rgb_to_lab(result)[lips], rgb_to_lab(source[0])[lips]).mean())
    assert deltas[0] < deltas[1] < deltas[2]


def test_prepared_reference_reuse_matches_direct_call(source, reference):
    params = ClassicParams(level="h2")
    prepared = prepare_reference(*reference[:3])
    flipped = [np.ascontiguousarray(source[0][:, ::-1]), source[1][:, ::-1].copy(), source[2].copy()]
    flipped[2][:, 0] = SIZE - 1 - flipped[2][:, 0]
    sources = [prepare_source(*source), prepare_source(*flipped)]
    many = transfer_many(sources, prepared, params)
    np.testing.assert_array_equal(many[0], transfer_classic(*source, *reference[:3], params))
    np.testing.assert_array_equal(many[1], transfer_prepared(sources[1], prepared, params))


def test_params_validation():
    with pytest.raises(ValueError):
        ClassicParams(level="h5")
    with pytest.raises(ValueError):
        ClassicParams(regions=frozenset({"cheeks"}))
    with pytest.raises(ValueError):
        ClassicParams(strengths={"lips": 1.5})
    params = ClassicParams(regions=frozenset({"lips"}), strengths={"lips": 0.3})
    assert params.strength("lips") == 0.3
    assert params.strength("skin") == 0.0


def _dev_face(path, detector):
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    height, width = rgb.shape[:2]
    landmarks = detector.detect(rgb)[0].landmarks * [SIZE / width, SIZE / height]
    seg = cv2.imread(str(path.parents[1] / "seg" / f"{path.stem}.png"), cv2.IMREAD_GRAYSCALE)
    labels = cv2.resize(seg, (SIZE, SIZE), interpolation=cv2.INTER_NEAREST)
    return cv2.resize(rgb, (SIZE, SIZE), interpolation=cv2.INTER_AREA), labels, landmarks


def test_dev_pair_open_mouth_keeps_teeth_and_eyes(faces_dir):
    detector = default_detector()
    sources = [_dev_face(path, detector) for path in sorted((faces_dir / "non_makeup" / "images").iterdir())]
    # A smiling source with visible teeth, and a reference with pink lips, blush and eye makeup.
    source = max(sources, key=lambda face: (face[1] == 10).sum())
    assert (source[1] == 10).sum() > 100
    reference = _dev_face(faces_dir / "makeup" / "images" / "vFG149.png", detector)
    result = transfer_classic(*source, *reference, ClassicParams(level="h4"))
    protected = np.isin(source[1], PROTECTED_LABELS)
    np.testing.assert_array_equal(result[protected], source[0][protected])
    before = makeup_fidelity(*source, *reference)
    after = makeup_fidelity(result, source[1], source[2], *reference)
    for region in ("lips", "skin", "eyes"):
        assert after[region] < 0.7 * before[region], (region, before[region], after[region])


def test_specular_highlights_flag_shine_not_blush():
    lab = np.zeros((64, 64, 3), dtype=np.float32)
    lab[...] = (65.0, 14.0, 16.0)  # skin
    lab[10:20, 10:20] = (85.0, 3.0, 4.0)  # shine: lighter and nearly grey
    lab[40:50, 40:50] = (68.0, 30.0, 10.0)  # blush: a little lighter, more saturated
    region = np.ones((64, 64), dtype=bool)
    flagged = specular_highlights(lab, region)
    assert flagged[10:20, 10:20].all()
    assert flagged.sum() == 100
    assert not specular_highlights(lab, np.zeros_like(region)).any()


def test_fine_details_are_the_finest_bands_of_the_shared_pyramid():
    torch = pytest.importorskip("torch")
    from shmt_cli.pyramid import laplacian_pyramid, reconstruct_pyramid

    image = np.random.default_rng(5).normal(size=(121, 98)).astype(np.float32)
    bands = laplacian_pyramid(torch.from_numpy(image)[None, None], 4)
    for level in range(5):
        details = fine_details(image, level, [2, 5])
        for depth, detail in zip([2, 5], details, strict=True):
            used = min(depth, level)
            kept = [band if index < used else torch.zeros_like(band) for index, band in enumerate(bands)]
            expected = reconstruct_pyramid(kept)[0, 0].numpy()
            np.testing.assert_allclose(detail, expected, atol=1e-5)
    # All bands but the residual: the image minus its coarse version.
    assert np.abs(fine_details(image, 4, [5])[0]).mean() > 0.5
