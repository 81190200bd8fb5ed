"""Training augmentation (spec §1.5): golden bit-exact stages from the logged parameters, and the
properties of the random draws."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from safetensors import safe_open

from shmt_cli.representations import NUM_LABELS
from shmt_cli.training import augment as aug
from shmt_cli.training.sample import (
    SAMPLE_KEYS,
    SampleParams,
    augment_sample,
    collate,
    draw_sample_params,
    make_sample,
    sample_tensors,
)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Build samples single-threaded, as a DataLoader worker does: on a shared CPU, small element-wise
    ops with 2 threads are ~30x slower than with one (thread wake-ups), which only costs test time."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# The golden batch's samples and the inference-golden input files they were made from.
GOLDEN_SOURCES = (("pair0", "00305"), ("pair1", "vSYYZ241"))


# ----------------------------------------------------------------------------------------------------
# Golden: fed the logged parameters, every stage equals the official dataset's bit for bit.


@pytest.fixture(scope="module")
def golden_batch(golden_dir: Path) -> tuple[dict[str, np.ndarray], list]:
    path = golden_dir / "train" / "train_batch.safetensors"
    if not path.is_file():
        pytest.skip(f"reference material not available: {path}")
    with safe_open(str(path), framework="pt") as handle:
        tensors = {key: handle.get_tensor(key).numpy() for key in handle.keys()}  # noqa: SIM118
        log = json.loads(handle.metadata()["aug_log"])
    return tensors, log


def _golden_inputs(golden_dir: Path, pair: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Decoded as the official loader does: image BGR->RGB, parsing single-channel, render kept BGR."""
    (image,) = (golden_dir / "inputs").glob(f"{pair}_source_image__*")
    (seg,) = (golden_dir / "inputs").glob(f"{pair}_source_seg__*")
    (depth,) = (golden_dir / "inputs").glob(f"{pair}_source_depth__*")
    rgb = cv2.cvtColor(cv2.imread(str(image), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    return rgb, cv2.imread(str(seg), cv2.IMREAD_GRAYSCALE), cv2.imread(str(depth), cv2.IMREAD_COLOR)


def _params_from_log(events: list[dict]) -> SampleParams:
    """The README's 12 events per sample: real_ref (3, ignored), A1, Spatial-A (3), A2, Spatial-B (4)."""

    def jitter(event: dict) -> aug.JitterParams | None:
        if not event["applied"]:
            return None
        p = event["params"]
        return aug.JitterParams(p["brightness"], p["contrast"], p["saturation"], p["hue"], tuple(p["order"]))

    def crop(event: dict) -> aug.CropParams:
        return aug.crop_from_fractions(event["params"]["h_start"], event["params"]["w_start"])

    def applied(event: dict, key: str):
        return event["params"][key] if event["applied"] else None

    names = [event["t"] for event in events]
    spatial = ["Resize", "RandomCrop", "Rotate"]
    assert names[3:] == ["ColorJitter", *spatial, "ColorJitter", *spatial, "ElasticTransform"]
    a2 = jitter(events[7])
    assert a2 is not None
    return SampleParams(
        a1=jitter(events[3]),
        spatial_a=aug.SpatialParams(crop(events[5]), applied(events[6], "angle")),
        a2=a2,
        spatial_b=aug.SpatialParams(
            crop(events[9]), applied(events[10], "angle"), applied(events[11], "random_state")
        ),
    )


def _hwc(chw: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(chw.transpose(1, 2, 0))


@pytest.mark.parametrize("index", [0, 1])
def test_golden_stages_bit_exact(golden_dir: Path, golden_batch, index: int) -> None:
    tensors, log = golden_batch
    image, labels, render = _golden_inputs(golden_dir, GOLDEN_SOURCES[index][0])
    params = _params_from_log(log[index])
    # The batch exercises every branch: sample 0 has A1 and a source rotation, sample 1 neither.
    fired = (params.a1 is not None, params.spatial_a.angle is not None)
    assert fired == ((True, True), (False, False))[index]
    assert params.spatial_b.angle is not None and params.spatial_b.elastic is not None
    stages = augment_sample(image, labels, render, params)

    def same(ours: np.ndarray, key: str, view=_hwc) -> None:
        golden = view(tensors[key][index] if key.startswith("batch.") else tensors[key])
        assert ours.shape == golden.shape, key
        assert np.array_equal(ours, golden), f"{key}: {np.count_nonzero(ours != golden)} pixels differ"

    same(stages.a1_image, f"aug.{index}.A1_image_rgb")
    same(stages.gt, "batch.u8.image_GT_rgb")
    same(stages.render, "batch.u8.source_depth_bgr")
    same(stages.source_labels, "batch.u8.source_seg", view=lambda a: a[0])
    same(stages.face_mask, "batch.source_face_seg", view=lambda a: a[0])
    same(stages.a2_face, f"aug.{index}.A2_face_rgb")
    same(stages.gray, "batch.u8.source_face_gray", view=lambda a: a[0])
    same(stages.ref_image, f"aug.{index}.ref_image_rgb")
    same(stages.ref_labels, "batch.u8.ref_seg", view=lambda a: a[0])


def test_golden_sample_tensors_equal_the_official_batch(golden_dir: Path, golden_batch) -> None:
    tensors, log = golden_batch
    samples = []
    for index, (pair, _) in enumerate(GOLDEN_SOURCES):
        image, labels, render = _golden_inputs(golden_dir, pair)
        samples.append(sample_tensors(augment_sample(image, labels, render, _params_from_log(log[index]))))
    batch = collate(samples)

    def unit(key: str) -> torch.Tensor:
        return ((torch.from_numpy(tensors[key]).to(torch.float32) / 255.0) - 0.5) / 0.5

    def onehot(key: str) -> torch.Tensor:
        seg = torch.from_numpy(tensors[key]).long()
        return torch.cat([(seg == k) for k in range(NUM_LABELS)], dim=1).to(torch.float32)

    expected = {
        "image_GT": unit("batch.u8.image_GT_rgb"),
        "source_depth": unit("batch.u8.source_depth_bgr"),
        "source_bg": unit("batch.u8.source_bg_rgb"),
        "source_face_gray": unit("batch.u8.source_face_gray"),
        "ref_face": unit("batch.u8.ref_face_rgb"),
        "source_seg_onehot": onehot("batch.u8.source_seg"),
        "ref_seg_onehot": onehot("batch.u8.ref_seg"),
        "source_face_seg": torch.from_numpy(tensors["batch.source_face_seg"]).float(),
        "source_neck_ears_seg": torch.from_numpy(tensors["batch.source_neck_ears_seg"]).float(),
        "source_seg": torch.from_numpy(tensors["batch.u8.source_seg"]),
        "ref_seg": torch.from_numpy(tensors["batch.u8.ref_seg"]),
    }
    assert set(batch) == set(expected) == set(SAMPLE_KEYS)
    for key, value in expected.items():
        assert batch[key].dtype == value.dtype, key
        assert torch.equal(batch[key], value), key
    # Sample 1's A2 had contrast < 1: its gray background is lifted above black and is not re-masked.
    assert batch["source_face_gray"][1].min() > -1


# ----------------------------------------------------------------------------------------------------
# Transforms with chosen parameters.


def _synthetic_face(size: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A photo-like (size², RGB) image, a 512² label map with face and non-face regions, a gray render."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    image = np.stack([180 * xx + 40, 150 * yy + 60, 90 + 60 * xx * yy], axis=2)
    image = np.clip(image + rng.normal(0, 12, image.shape), 0, 255).astype(np.uint8)
    labels = np.zeros((512, 512), np.uint8)
    labels[:, :] = 13  # hair
    cv2.ellipse(labels, (256, 280), (150, 190), 0, 0, 360, 1, -1)  # skin
    cv2.rectangle(labels, (190, 200), (230, 215), 6, -1)  # brows
    cv2.rectangle(labels, (280, 200), (320, 215), 7, -1)
    cv2.circle(labels, (210, 240), 15, 4, -1)  # eyes
    cv2.circle(labels, (300, 240), 15, 5, -1)
    cv2.ellipse(labels, (256, 380), (50, 15), 0, 0, 180, 12, -1)  # lips
    cv2.ellipse(labels, (256, 380), (50, 15), 0, 180, 360, 11, -1)
    labels[470:, :] = 17  # neck
    render = np.zeros((size, size, 3), np.uint8)
    cv2.ellipse(render, (size // 2, size // 2 + 10), (size // 4, size // 3), 0, 0, 360, (200, 200, 200), -1)
    return image, labels, render


def test_color_jitter_neutral_is_identity_and_each_operation_follows_its_formula() -> None:
    image, _, _ = _synthetic_face(64)
    assert np.array_equal(aug.color_jitter(image, aug.JitterParams(1.0, 1.0, 1.0, 0.0)), image)
    flat = np.full((8, 8, 3), 100, np.uint8)
    # trunc(119.5): the LUT truncates, it does not round.
    assert np.all(aug.color_jitter(flat, aug.JitterParams(1.195, 1, 1, 0)) == 119)
    # Contrast pulls towards the mean gray: black on a half-white image goes to trunc(mean·(1 − c)).
    half = np.zeros((8, 8, 3), np.uint8)
    half[:4] = 255
    out = aug.color_jitter(half, aug.JitterParams(1, 0.8, 1, 0))
    assert out[5, 5, 0] == int(127.5 * 0.2) and out[0, 0, 0] == int(255 * 0.8 + 127.5 * 0.2)
    # Saturation 0.8 of a pure red keeps the gray value's share; hue 0.5 turns red into cyan.
    red = np.zeros((4, 4, 3), np.uint8)
    red[..., 0] = 200
    cyan = aug.color_jitter(red, aug.JitterParams(1, 1, 1, 0.5))
    assert cyan[0, 0, 0] == 0 and cyan[0, 0, 1] == cyan[0, 0, 2] == 200
    # The order matters (brightness then contrast is not contrast then brightness).
    a = aug.color_jitter(image, aug.JitterParams(1.2, 0.8, 1, 0, (0, 1, 2, 3)))
    b = aug.color_jitter(image, aug.JitterParams(1.2, 0.8, 1, 0, (1, 0, 2, 3)))
    assert not np.array_equal(a, b)


def test_spatial_labels_stay_ids_of_the_input() -> None:
    image, labels, render = _synthetic_face()
    rng = np.random.default_rng(3)
    present = set(np.unique(labels).tolist()) | {0}
    for _ in range(12):
        params = aug.draw_spatial_b(rng)
        out_image, out_labels = aug.spatial(np.concatenate([image, render], axis=2), labels, params)
        assert out_image.shape == (256, 256, 6) and out_image.dtype == np.uint8
        assert out_labels.shape == (256, 256) and out_labels.dtype == np.uint8
        assert set(np.unique(out_labels).tolist()) <= present


def test_elastic_moves_image_and_labels_together() -> None:
    # An image that *is* the label map (×10) must still show the warped labels after the same field.
    _, labels, _ = _synthetic_face()
    small = aug.crop(aug.resize_labels(labels), aug.CropParams(15, 15))
    image = np.repeat((small * 10)[:, :, None], 3, axis=2)
    warped_image, warped_labels = aug.elastic(image, 1234), aug.elastic_labels(small, 1234)
    assert not np.array_equal(warped_labels, small)
    # Away from label edges bilinear and nearest agree.
    interior = cv2.erode((warped_labels == 1).astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    assert interior.sum() > 5000
    assert np.all(warped_image[interior] == 10)


def test_rotation_of_six_channels_equals_its_three_channel_halves_for_gray_renders() -> None:
    # The chunked warp gives every channel the same geometry: a gray render copied into channels 0–2 and
    # 3–5 comes out identical in both halves.
    _, _, render = _synthetic_face(256)
    out = aug.rotate(np.concatenate([render, render], axis=2), 30.0)
    assert np.array_equal(out[..., :3], out[..., 3:])
    assert np.array_equal(out[..., :3], aug.rotate(render, 30.0))


def test_wide_images_are_warped_in_albumentations_chunks() -> None:
    # 6 channels: 0–3 together, then 4 and 5 one by one (never as one 2-channel array: OpenCV 5 rounds those
    # differently, and the golden render channels only match this way).
    shapes: list[tuple[int, ...]] = []

    def record(chunk: np.ndarray) -> np.ndarray:
        shapes.append(chunk.shape)
        return chunk[:, :, 0] if chunk.shape[2] == 1 else chunk

    out = aug._per_chunk(np.zeros((8, 8, 6), np.uint8), record)
    assert shapes == [(8, 8, 4), (8, 8, 1), (8, 8, 1)] and out.shape == (8, 8, 6)


# ----------------------------------------------------------------------------------------------------
# The random draws.

DRAWS = 4000


@pytest.fixture(scope="module")
def many_params() -> list[SampleParams]:
    rng = np.random.default_rng(20260110)
    return [draw_sample_params(rng) for _ in range(DRAWS)]


def test_draw_ranges(many_params: list[SampleParams]) -> None:
    jitters = [p.a2 for p in many_params] + [p.a1 for p in many_params if p.a1 is not None]
    for name in ("brightness", "contrast", "saturation"):
        values = np.array([getattr(j, name) for j in jitters])
        assert values.min() >= 0.8 and values.max() <= 1.2 and values.max() - values.min() > 0.39
    hues = np.array([j.hue for j in jitters])
    assert hues.min() >= -0.2 and hues.max() <= 0.2 and hues.max() - hues.min() > 0.39
    assert all(sorted(j.order) == [0, 1, 2, 3] for j in jitters)
    assert len({j.order for j in jitters}) == 24
    spatials = [p.spatial_a for p in many_params] + [p.spatial_b for p in many_params]
    offsets = np.array([(s.crop.y, s.crop.x) for s in spatials])
    assert set(np.unique(offsets).tolist()) == set(range(31))
    angles = np.array([s.angle for s in spatials if s.angle is not None])
    assert angles.min() >= -45 and angles.max() <= 45 and angles.max() - angles.min() > 89
    seeds = np.array([p.spatial_b.elastic for p in many_params if p.spatial_b.elastic is not None])
    assert seeds.min() >= 0 and seeds.max() <= 10000 and seeds.max() - seeds.min() > 9000
    assert all(p.spatial_a.elastic is None for p in many_params)


def test_detail_scale_range() -> None:
    rng = np.random.default_rng(1)
    scales = np.array([aug.draw_detail_scale(rng) for _ in range(DRAWS)])
    assert scales.min() >= 0.2 and scales.max() <= 1.0 and scales.max() - scales.min() > 0.79
    assert scales.mean() == pytest.approx(0.6, abs=0.01)


def test_draw_probabilities(many_params: list[SampleParams]) -> None:
    def rate(flags: list[bool]) -> float:
        return float(np.mean(flags))

    # 4000 draws: the standard error of a rate is at most 0.008, so ±0.03 is about 4 sigma.
    assert rate([p.a1 is not None for p in many_params]) == pytest.approx(0.5, abs=0.03)
    assert rate([p.spatial_a.angle is not None for p in many_params]) == pytest.approx(0.5, abs=0.03)
    assert rate([p.spatial_b.angle is not None for p in many_params]) == pytest.approx(0.5, abs=0.03)
    assert rate([p.spatial_b.elastic is not None for p in many_params]) == pytest.approx(0.8, abs=0.03)


def test_reference_draws_are_independent_of_the_source_branch(many_params: list[SampleParams]) -> None:
    a = np.array([(p.spatial_a.crop.y, p.spatial_a.crop.x, p.spatial_a.angle or 0.0) for p in many_params])
    b = np.array([(p.spatial_b.crop.y, p.spatial_b.crop.x, p.spatial_b.angle or 0.0) for p in many_params])
    for column in range(3):
        assert abs(np.corrcoef(a[:, column], b[:, column])[0, 1]) < 0.06
    # The reference's rotation rate does not depend on whether the source rotated.
    source_rotated = np.array([p.spatial_a.angle is not None for p in many_params])
    ref_rotated = np.array([p.spatial_b.angle is not None for p in many_params])
    assert abs(ref_rotated[source_rotated].mean() - ref_rotated[~source_rotated].mean()) < 0.06
    # A fixed number of draws per branch: the reference branch of a seed is the same whether or not A1
    # or the source rotation fired, because neither changes how many values the source branch consumes.
    assert len({(p.a1 is None, p.spatial_a.angle is None) for p in many_params}) == 4


# ----------------------------------------------------------------------------------------------------
# Whole samples.


def test_gt_and_reference_share_colours_not_geometry() -> None:
    image, labels, render = _synthetic_face()
    rng = np.random.default_rng(11)
    params = draw_sample_params(rng)
    while params.a1 is None or params.spatial_b.elastic is None:
        params = draw_sample_params(rng)
    stages = augment_sample(image, labels, render, params)
    # Colours: with Spatial-B's geometry replaced by Spatial-A's, the reference branch yields exactly GT.
    same_geometry = SampleParams(params.a1, params.spatial_a, params.a2, params.spatial_a)
    twin = augment_sample(image, labels, render, same_geometry)
    assert np.array_equal(twin.ref_image, stages.gt) and np.array_equal(twin.ref_labels, stages.source_labels)
    # ... and A1 did change the colours of both (GT is not the un-jittered crop).
    no_a1 = SampleParams(None, params.spatial_a, params.a2, params.spatial_b)
    plain = augment_sample(image, labels, render, no_a1)
    assert np.abs(plain.gt.astype(int) - stages.gt.astype(int)).mean() > 2
    # Geometry: independent crop/rotation + elastic warp, so the parsing maps disagree on many pixels.
    assert np.mean(stages.ref_labels != stages.source_labels) > 0.05
    # A2 only touches the content image: GT and the reference do not depend on it.
    strong = aug.JitterParams(1.2, 0.8, 1.2, 0.1)
    other_a2 = SampleParams(params.a1, params.spatial_a, strong, params.spatial_b)
    rejittered = augment_sample(image, labels, render, other_a2)
    assert np.array_equal(rejittered.gt, stages.gt) and np.array_equal(rejittered.ref_image, stages.ref_image)
    assert not np.array_equal(rejittered.gray, stages.gray)


def test_a_seed_reproduces_a_sample_and_tensors_have_the_documented_form() -> None:
    image, labels, render = _synthetic_face()
    first = make_sample(image, labels, render, np.random.default_rng(7))
    again = make_sample(image, labels, render, np.random.default_rng(7))
    other = make_sample(image, labels, render, np.random.default_rng(8))
    assert all(torch.equal(first[k], again[k]) for k in SAMPLE_KEYS)
    assert not torch.equal(first["ref_face"], other["ref_face"])
    shapes = {
        "image_GT": (3, 256, 256), "source_depth": (3, 256, 256), "source_bg": (3, 256, 256),
        "ref_face": (3, 256, 256), "source_face_gray": (1, 256, 256), "source_seg_onehot": (19, 256, 256),
        "ref_seg_onehot": (19, 256, 256), "source_face_seg": (1, 256, 256),
        "source_neck_ears_seg": (1, 256, 256), "source_seg": (1, 256, 256), "ref_seg": (1, 256, 256),
    }  # fmt: skip
    for key, shape in shapes.items():
        assert tuple(first[key].shape) == shape, key
    for key in ("image_GT", "source_depth", "source_bg", "ref_face", "source_face_gray"):
        assert first[key].dtype == torch.float32 and first[key].min() >= -1 and first[key].max() <= 1
    for key in ("source_seg_onehot", "ref_seg_onehot"):
        assert torch.equal(first[key].sum(0), torch.ones(256, 256))  # exactly one label per pixel
    assert first["source_seg"].dtype == torch.uint8 and int(first["source_seg"].max()) < NUM_LABELS
    # Masked images are black (−1) exactly where the mask says.
    mask = first["source_face_seg"].bool()
    assert torch.all(first["source_bg"][:, mask[0]] == -1)
    batch = collate([first, other])
    assert batch["image_GT"].shape == (2, 3, 256, 256)
