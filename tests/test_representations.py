"""SHMT representations: golden parity from the raw official example files, and properties."""

from __future__ import annotations

import hashlib
import json

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from shmt_cli.face.labels import FACE_LABELS, NECK_EARS_LABELS, NUM_LABELS
from shmt_cli.pyramid import laplacian_pyramid
from shmt_cli.representations import (
    background,
    band_to_64,
    content_tensor,
    detail_64,
    detail_channels,
    face_mask,
    gray_bgr_quirk,
    gray_face,
    image_batch,
    label_batch,
    mask_64,
    neck_ears_mask,
    one_hot,
    onehot_64,
    reference_parts,
    resize_inputs,
    source_parts,
    to_unit_range,
    unshuffle4,
)

GOLDEN_ATOL = 1e-5
ROLES = ("source_image", "source_depth", "source_seg", "ref_image", "ref_seg")


# ---------------------------------------------------------------------------------------------- golden


@pytest.fixture(scope="module")
def golden_inputs(golden_dir):
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = golden_dir / "tiny_inputs.safetensors"
    with safe_open(str(path), "pt") as handle:
        files = json.loads(handle.metadata()["files"])
    return load_file(str(path)), files


@pytest.fixture(scope="module")
def golden_io(golden_dir):
    from safetensors.torch import load_file

    return {name: load_file(str(golden_dir / f"tiny_{name}_io.safetensors")) for name in ("h4", "h0")}


@pytest.fixture(scope="module")
def decoded_files(golden_dir):
    """cv2.imread of every golden input file, as the official loader reads them: {(pair, role): array}."""
    decoded = {}
    for pair in (0, 1):
        for role in ROLES:
            (path,) = golden_dir.glob(f"inputs/pair{pair}_{role}__*")
            flag = cv2.IMREAD_GRAYSCALE if role.endswith("seg") else cv2.IMREAD_COLOR
            decoded[pair, role] = cv2.imread(str(path), flag)
    return decoded


@pytest.fixture(scope="module")
def golden_parts(decoded_files):
    """SourceParts and ReferenceParts for the two golden pairs, built from the raw files."""
    sources, references = [], []
    for pair in (0, 1):
        image = cv2.cvtColor(decoded_files[pair, "source_image"], cv2.COLOR_BGR2RGB)
        sources.append(
            resize_inputs(image, decoded_files[pair, "source_seg"], decoded_files[pair, "source_depth"])
        )
        ref_image = cv2.cvtColor(decoded_files[pair, "ref_image"], cv2.COLOR_BGR2RGB)
        references.append(resize_inputs(ref_image, decoded_files[pair, "ref_seg"]))
    source = source_parts(
        np.stack([s[0] for s in sources]),
        np.stack([s[1] for s in sources]),
        np.stack([s[2] for s in sources]),
        levels=(0, 4),
    )
    reference = reference_parts(np.stack([r[0] for r in references]), np.stack([r[1] for r in references]))
    return source, reference


def test_decoded_inputs_match_official_hashes(golden_inputs, decoded_files):
    _, files = golden_inputs
    keys = {
        "source_image": "source_image_bgr",
        "source_depth": "source_depth_bgr",
        "ref_image": "ref_image_bgr",
    }
    for (pair, role), array in decoded_files.items():
        entry = files[f"pair{pair}.{keys.get(role, role)}"]
        assert list(array.shape) == entry["cv2_imread_shape"]
        assert hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest() == entry["cv2_imread_sha256"]


def test_every_u8_tensor_matches_official(golden_inputs, golden_parts):
    tensors, _ = golden_inputs
    source, reference = golden_parts
    ours = {
        "u8.source_image_rgb": source.image_u8,
        "u8.source_depth_bgr": source.render_u8,
        "u8.source_seg": source.labels,
        "u8.ref_image_rgb": reference.image_u8,
        "u8.ref_seg": reference.labels,
        "u8.source_face_seg": source.face_mask_u8,
        "u8.source_neck_ears_seg": source.neck_ears_mask_u8,
        "u8.source_bg_rgb": source.bg_u8,
        "u8.source_face_gray": source.gray_u8,
        "u8.ref_face_rgb": reference.makeup_u8,
    }
    assert set(ours) == {name for name in tensors if name.startswith("u8.")}
    for name, tensor in ours.items():
        assert tensor.dtype == torch.uint8, name
        assert torch.equal(tensor, tensors[name]), name


def test_seg64_matches_official(golden_inputs, golden_parts):
    tensors, _ = golden_inputs
    source, _ = golden_parts
    assert torch.equal(source.mask64, tensors["pre.source_face_seg_64"])


def test_texture_details_match_official(golden_io, golden_parts):
    source, _ = golden_parts
    for level, model in ((0, "h0"), (4, "h4")):
        expected = golden_io[model]["pre.source_HF_detail"]
        assert source.details[level].shape == expected.shape
        torch.testing.assert_close(source.details[level], expected, atol=GOLDEN_ATOL, rtol=0)
    for level in range(1, 6):
        expected = golden_io["h4"][f"pre.lap_pyramid.{level}"]
        torch.testing.assert_close(source.bands[level], expected, atol=GOLDEN_ATOL, rtol=0)


def test_source_hf_and_ref_lf_layout(golden_inputs, golden_io, golden_parts):
    tensors, _ = golden_inputs
    source, reference = golden_parts
    depth = ((tensors["u8.source_depth_bgr"].float() / 255) - 0.5) / 0.5
    for level, model, channels in ((0, "h0", 64), (4, "h4", 49)):
        # source_HF = cat([HF_detail, pixel_unshuffle(source_depth, 4)]) per the golden README.
        expected = torch.cat([golden_io[model]["pre.source_HF_detail"], F.pixel_unshuffle(depth, 4)], 1)
        assert source.content[level].shape == (2, channels, 64, 64)
        torch.testing.assert_close(source.content[level], expected, atol=GOLDEN_ATOL, rtol=0)
    ref_face = ((tensors["u8.ref_face_rgb"].float() / 255) - 0.5) / 0.5
    assert reference.makeup64.shape == (2, 48, 64, 64)
    assert torch.equal(reference.makeup64, F.pixel_unshuffle(ref_face, 4))


def test_float_tensors_are_official_normalisation(golden_inputs, golden_parts):
    tensors, _ = golden_inputs
    source, reference = golden_parts

    def official(name: str) -> torch.Tensor:
        return ((tensors[name].float() / 255) - 0.5) / 0.5

    assert torch.equal(source.bg, official("u8.source_bg_rgb"))
    assert torch.equal(source.gray, official("u8.source_face_gray"))
    assert torch.equal(source.render, official("u8.source_depth_bgr"))
    assert torch.equal(source.image, official("u8.source_image_rgb"))
    assert torch.equal(reference.makeup, official("u8.ref_face_rgb"))
    assert torch.equal(reference.image, official("u8.ref_image_rgb"))
    for parts, seg in ((source, "u8.source_seg"), (reference, "u8.ref_seg")):
        expected = torch.cat([(tensors[seg] == k).double() for k in range(NUM_LABELS)], 1).float()
        assert torch.equal(parts.onehot, expected)


# ---------------------------------------------------------------------------------------------- resize


def test_resize_inputs_geometry():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (329, 301, 3), dtype=np.uint8)
    render = rng.integers(0, 256, (329, 301, 3), dtype=np.uint8)
    labels = rng.integers(0, 19, (512, 512), dtype=np.uint8)
    resized, resized_labels, resized_render = resize_inputs(image, labels, render)
    assert resized.shape == (256, 256, 3) and resized_render.shape == (256, 256, 3)
    assert np.array_equal(resized_labels, labels[::2, ::2])
    assert np.array_equal(resized, cv2.resize(image, (256, 256), interpolation=cv2.INTER_LINEAR))
    alone, _, none = resize_inputs(image, labels)
    assert none is None and np.array_equal(alone, resized)
    with pytest.raises(ValueError):
        resize_inputs(image, labels, render[:-1])
    with pytest.raises(ValueError):
        resize_inputs(image, labels.astype(np.int32))


# ---------------------------------------------------------------------------------------------- uint8 stage


def test_gray_quirk_matches_opencv_on_every_colour():
    # The full 256³ RGB cube, 64 blue values at a time to bound memory.
    values = np.arange(256, dtype=np.uint8)
    for blue_start in range(0, 256, 64):
        blues = values[blue_start : blue_start + 64]
        channels = np.broadcast_arrays(values[None, :, None], values[None, None, :], blues[:, None, None])
        cube = np.stack(channels, axis=-1).reshape(64 * 256, 256, 3)
        expected = cv2.cvtColor(cube, cv2.COLOR_BGR2GRAY)
        got = gray_bgr_quirk(image_batch(cube))[0, 0].numpy()
        assert np.array_equal(got, expected)


def test_gray_quirk_swaps_red_and_blue_weights():
    red = torch.zeros(1, 3, 1, 1, dtype=torch.uint8)
    red[:, 0] = 255
    blue = torch.zeros(1, 3, 1, 1, dtype=torch.uint8)
    blue[:, 2] = 255
    assert int(gray_bgr_quirk(red)) == round(0.114 * 255)
    assert int(gray_bgr_quirk(blue)) == round(0.299 * 255)


def test_masks_follow_label_sets():
    labels = torch.arange(NUM_LABELS, dtype=torch.uint8).view(1, 1, 1, NUM_LABELS)
    assert face_mask(labels).flatten().nonzero().flatten().tolist() == list(FACE_LABELS)
    numpy_mask = face_mask(labels.numpy())
    assert isinstance(numpy_mask, np.ndarray) and numpy_mask.dtype == np.uint8
    assert np.array_equal(numpy_mask, face_mask(labels).numpy())
    assert neck_ears_mask(labels).flatten().nonzero().flatten().tolist() == list(NECK_EARS_LABELS)


def test_masked_images_are_black_then_minus_one(astronaut_rgb):
    image = image_batch(cv2.resize(astronaut_rgb, (256, 256)))
    labels = torch.zeros(1, 1, 256, 256, dtype=torch.uint8)
    labels[..., 64:192, 64:192] = 1  # skin
    labels[..., 100:120, 90:110] = 4  # an eye: not face
    mask = face_mask(labels)
    bg = background(image, mask)
    assert torch.equal(bg[..., 64:100, 64:192], torch.zeros_like(bg[..., 64:100, 64:192]))
    assert torch.equal(bg[..., 100:120, 90:110], image[..., 100:120, 90:110])
    assert torch.all(to_unit_range(bg)[..., 64:100, 64:192] == -1)
    gray = gray_face(image, mask)
    assert torch.all(gray[..., :64, :] == 0) and torch.all(gray[..., 100:120, 90:110] == 0)
    assert gray[..., 64:100, 64:192].float().mean() > 20


# ---------------------------------------------------------------------------------------------- float stage


def test_unit_range_end_points_and_formula():
    values = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
    unit = to_unit_range(values)
    assert unit.dtype == torch.float32
    assert unit.min() == -1 and unit.max() == 1
    expected = (np.arange(256, dtype=np.float32) / np.float32(255) - np.float32(0.5)) / np.float32(0.5)
    assert np.array_equal(unit.flatten().numpy(), expected)


def test_one_hot_is_a_partition():
    labels = torch.randint(0, NUM_LABELS, (2, 1, 32, 32), generator=torch.Generator().manual_seed(0))
    onehot = one_hot(labels.to(torch.uint8))
    assert onehot.shape == (2, NUM_LABELS, 32, 32) and onehot.dtype == torch.float32
    assert torch.equal(onehot.sum(1), torch.ones(2, 32, 32))
    assert torch.equal(onehot.argmax(1, keepdim=True), labels)
    assert one_hot(torch.full((1, 1, 2, 2), 200, dtype=torch.uint8)).sum() == 0


def test_unshuffle4_channel_layout():
    image = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(1))
    unshuffled = unshuffle4(image)
    assert unshuffled.shape == (1, 48, 64, 64)
    for channel, a, b, y, x in ((0, 0, 0, 0, 0), (1, 2, 3, 10, 5), (2, 3, 1, 63, 40)):
        assert unshuffled[0, channel * 16 + 4 * a + b, y, x] == image[0, channel, 4 * y + a, 4 * x + b]


def test_mask64_is_mean_of_central_pixels():
    mask = torch.randint(0, 2, (2, 1, 256, 256), generator=torch.Generator().manual_seed(2)).to(torch.uint8)
    small = mask_64(mask)
    blocks = mask.float().view(2, 1, 64, 4, 64, 4)
    central = blocks[:, :, :, 1:3, :, 1:3].mean(dim=(3, 5))
    assert torch.equal(small, central)
    assert set(small.unique().tolist()) <= {0.0, 0.25, 0.5, 0.75, 1.0}


def test_onehot64_keeps_block_corner():
    labels = torch.randint(0, NUM_LABELS, (1, 1, 256, 256), generator=torch.Generator().manual_seed(3))
    onehot = one_hot(labels)
    assert torch.equal(onehot_64(onehot), onehot[..., ::4, ::4])


def test_detail_levels_map_to_latent_grid():
    gray = torch.rand(2, 1, 256, 256, generator=torch.Generator().manual_seed(4)) * 2 - 1
    bands = laplacian_pyramid(gray, 5)
    for level in range(5):
        detail = detail_64(gray, level)
        assert detail.shape == (2, detail_channels(level), 64, 64)
        assert torch.equal(detail, band_to_64(bands[level], level))
    assert torch.equal(detail_64(gray, 2), bands[2])
    assert torch.equal(detail_64(gray, 1), F.pixel_unshuffle(bands[1], 2))
    # Nearest upsampling: every h4 value fills its 4x4 block, every h3 value its 2x2 block.
    assert torch.equal(detail_64(gray, 4), bands[4].repeat_interleave(4, 2).repeat_interleave(4, 3))
    assert torch.equal(detail_64(gray, 3), bands[3].repeat_interleave(2, 2).repeat_interleave(2, 3))
    torch.testing.assert_close(detail_64(gray, 0, scale=0.5), 0.5 * F.pixel_unshuffle(bands[0], 4))
    with pytest.raises(ValueError):
        detail_64(gray, 5)


def test_content_tensor_layout():
    detail = torch.randn(2, 1, 64, 64)
    render = torch.randn(2, 3, 256, 256)
    content = content_tensor(detail, render)
    assert content.shape == (2, 49, 64, 64)
    assert torch.equal(content[:, :1], detail)
    assert torch.equal(content[:, 1:], unshuffle4(render))


# ---------------------------------------------------------------------------------------------- bundles


def _synthetic_pair(astronaut_rgb: np.ndarray, batch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    image = cv2.resize(astronaut_rgb, (256, 256), interpolation=cv2.INTER_AREA)
    labels = np.zeros((256, 256), dtype=np.uint8)
    labels[40:200, 70:190] = 1
    labels[150:170, 110:150] = 12
    labels[200:256, 90:170] = 17
    render = np.repeat(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=2)
    render[labels == 0] = 0
    flipped = (image[:, ::-1], labels[:, ::-1], render[:, ::-1])
    items = [(image, labels, render), flipped][:batch]
    return tuple(np.stack([item[k] for item in items]) for k in range(3))  # type: ignore[return-value]


def test_source_parts_shapes_and_batch_independence(astronaut_rgb):
    images, labels, renders = _synthetic_pair(astronaut_rgb, 2)
    both = source_parts(images, labels, renders, levels=(0, 2, 4), detail_scale=1.0)
    assert both.image_u8.shape == (2, 3, 256, 256) and both.gray.shape == (2, 1, 256, 256)
    assert both.onehot.shape == (2, 19, 256, 256) and both.onehot64.shape == (2, 19, 64, 64)
    assert both.mask64.shape == (2, 1, 64, 64) and len(both.bands) == 6
    assert {level: c.shape[1] for level, c in both.content.items()} == {0: 64, 2: 49, 4: 49}
    second = source_parts(images[1], labels[1], renders[1], levels=(0, 2, 4))
    for name in ("bg", "gray", "render", "mask64", "onehot64"):
        assert torch.equal(getattr(both, name)[1:], getattr(second, name)), name
    for level in (0, 2, 4):
        assert torch.equal(both.content[level][1:], second.content[level])


def test_source_parts_accepts_nchw_tensors_and_scales_detail(astronaut_rgb):
    images, labels, renders = _synthetic_pair(astronaut_rgb, 1)
    from_numpy = source_parts(images, labels, renders, levels=(4,))
    from_torch = source_parts(
        image_batch(images), label_batch(labels), torch.from_numpy(renders).permute(0, 3, 1, 2), levels=(4,)
    )
    assert torch.equal(from_numpy.content[4], from_torch.content[4])
    jittered = source_parts(images, labels, renders, levels=(4,), detail_scale=0.25)
    torch.testing.assert_close(jittered.details[4], 0.25 * from_numpy.details[4])
    assert torch.equal(jittered.content[4][:, 1:], from_numpy.content[4][:, 1:])
    with pytest.raises(ValueError):
        source_parts(images, labels, renders, levels=(5,))
    with pytest.raises(ValueError):
        source_parts(images, labels[:, :128], renders)


def test_reference_parts(astronaut_rgb):
    images, labels, _ = _synthetic_pair(astronaut_rgb, 2)
    parts = reference_parts(images, labels)
    mask = torch.from_numpy(np.isin(labels, FACE_LABELS))[:, None]
    assert torch.equal(parts.makeup_u8, image_batch(images) * mask)
    assert torch.all(parts.makeup[(~mask).expand(-1, 3, -1, -1)] == -1)
    assert torch.equal(parts.makeup64, unshuffle4(parts.makeup))
    assert parts.onehot64.shape == (2, 19, 64, 64)


def test_label_groups_name_celebamask_ids() -> None:
    from shmt_cli.face.labels import EYES_MOUTH_LABELS, Label

    assert NUM_LABELS == 19 and [int(k) for k in Label] == list(range(19))
    assert FACE_LABELS == (1, 2, 6, 7, 8, 9, 11, 12, 17)  # spec §1.2, M_face
    assert NECK_EARS_LABELS == (8, 9, 17) and EYES_MOUTH_LABELS == (4, 5, 10)
