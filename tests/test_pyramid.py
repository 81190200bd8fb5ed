"""Laplacian pyramid: golden parity with the official Lap_Pyramid_Conv, OpenCV parity and properties."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from shmt_cli.pyramid import (
    downsample,
    gaussian_blur,
    laplacian_pyramid,
    max_levels,
    reconstruct_pyramid,
    upsample,
)

GOLDEN_ATOL = 1e-5


def _random(shape: tuple[int, ...], seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=generator, dtype=dtype) * 2 - 1


@pytest.fixture(scope="module")
def golden_gray(golden_dir):
    """The official gray face of the two golden pairs in [-1, 1], (2, 1, 256, 256) float32."""
    from safetensors.torch import load_file

    gray_u8 = load_file(str(golden_dir / "tiny_inputs.safetensors"))["u8.source_face_gray"]
    return ((gray_u8.to(torch.float32) / 255) - 0.5) / 0.5


@pytest.fixture(scope="module")
def golden_io(golden_dir):
    from safetensors.torch import load_file

    return {name: load_file(str(golden_dir / f"tiny_{name}_io.safetensors")) for name in ("h4", "h0")}


# ---------------------------------------------------------------------------------------------- golden


def test_five_levels_match_official_h4_pyramid(golden_gray, golden_io):
    bands = laplacian_pyramid(golden_gray, 5)
    assert len(bands) == 6
    for level in range(1, 6):
        expected = golden_io["h4"][f"pre.lap_pyramid.{level}"]
        assert bands[level].shape == expected.shape
        torch.testing.assert_close(bands[level], expected, atol=GOLDEN_ATOL, rtol=0)


def test_one_level_matches_official_h0_pyramid(golden_gray, golden_io):
    high, low = laplacian_pyramid(golden_gray, 1)
    torch.testing.assert_close(low, golden_io["h0"]["pre.lap_pyramid.1"], atol=GOLDEN_ATOL, rtol=0)
    # h0 itself is stored only through its unshuffled form.
    detail = F.pixel_unshuffle(high, 4)
    torch.testing.assert_close(detail, golden_io["h0"]["pre.source_HF_detail"], atol=GOLDEN_ATOL, rtol=0)


def test_golden_round_trip(golden_gray):
    bands = laplacian_pyramid(golden_gray, 5)
    torch.testing.assert_close(reconstruct_pyramid(bands), golden_gray, atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------------------------- OpenCV


@pytest.mark.parametrize("shape", [(16, 16), (15, 22), (37, 51)])
def test_blur_and_resampling_match_opencv(shape):
    rng = np.random.default_rng(sum(shape))
    image = rng.standard_normal(shape).astype(np.float32)
    tensor = torch.from_numpy(image)[None, None]
    kernel = np.outer([1, 4, 6, 4, 1], [1, 4, 6, 4, 1]).astype(np.float32) / 256
    blurred = cv2.filter2D(image, -1, kernel, borderType=cv2.BORDER_REFLECT_101)
    np.testing.assert_allclose(gaussian_blur(tensor)[0, 0].numpy(), blurred, atol=1e-6)
    np.testing.assert_allclose(downsample(gaussian_blur(tensor))[0, 0].numpy(), cv2.pyrDown(image), atol=1e-6)
    # The crop rule for odd sizes is what cv2.pyrUp does with an odd dstsize.
    coarse = cv2.pyrDown(image)
    expected_up = cv2.pyrUp(coarse, dstsize=(shape[1], shape[0]))
    got_up = upsample(torch.from_numpy(coarse)[None, None], size=shape)[0, 0].numpy()
    np.testing.assert_allclose(got_up, expected_up, atol=1e-6)


# ---------------------------------------------------------------------------------------------- properties


def test_sizes_for_256_input():
    bands = laplacian_pyramid(_random((2, 1, 256, 256)), 5)
    assert [tuple(band.shape) for band in bands] == [(2, 1, s, s) for s in (256, 128, 64, 32, 16, 8)]


@pytest.mark.parametrize(
    ("height", "width", "levels"), [(256, 256, 5), (256, 256, 7), (37, 50, 4), (101, 67, 3)]
)
def test_reconstruction_is_exact(height, width, levels):
    image = _random((2, 3, height, width), seed=height + width)
    bands = laplacian_pyramid(image, levels)
    assert tuple(bands[0].shape) == (2, 3, height, width)
    torch.testing.assert_close(reconstruct_pyramid(bands), image, atol=2e-6, rtol=0)


def test_odd_sizes_follow_ceil_halving():
    bands = laplacian_pyramid(_random((1, 1, 37, 50)), 4)
    assert [tuple(band.shape[-2:]) for band in bands] == [(37, 50), (19, 25), (10, 13), (5, 7), (3, 4)]


def _official_odd_size_pyramid(image: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """The official rule written out: nearest-resize up(d) to the current size when they differ."""
    bands, current = [], image
    for _ in range(levels):
        coarser = downsample(gaussian_blur(current))
        up = upsample(coarser)
        if up.shape[-2:] != current.shape[-2:]:
            up = F.interpolate(up, size=tuple(current.shape[-2:]), mode="nearest")
        bands.append(current - up)
        current = coarser
    return [*bands, current]


@pytest.mark.parametrize("shape", [(37, 50), (101, 67), (255, 129)])
def test_odd_sizes_equal_the_official_nearest_rule(shape):
    image = _random((1, 2, *shape), seed=shape[0])
    for ours, official in zip(laplacian_pyramid(image, 3), _official_odd_size_pyramid(image, 3), strict=True):
        assert torch.equal(ours, official)


def test_h0_does_not_depend_on_level_count():
    image = _random((2, 1, 256, 256), seed=5)
    assert torch.equal(laplacian_pyramid(image, 1)[0], laplacian_pyramid(image, 5)[0])
    assert torch.equal(laplacian_pyramid(image, 3)[2], laplacian_pyramid(image, 5)[2])


def test_channels_and_batch_items_are_independent():
    image = _random((2, 3, 64, 64), seed=6)
    together = laplacian_pyramid(image, 3)
    for item in range(2):
        for channel in range(3):
            alone = laplacian_pyramid(image[item : item + 1, channel : channel + 1], 3)
            for band_all, band_one in zip(together, alone, strict=True):
                assert torch.equal(band_all[item : item + 1, channel : channel + 1], band_one)


def test_constant_image_has_zero_detail():
    image = torch.full((1, 1, 64, 48), 0.37)
    bands = laplacian_pyramid(image, 4)
    for band in bands[:-1]:
        assert band.abs().max() < 1e-6
    torch.testing.assert_close(bands[-1], torch.full_like(bands[-1], 0.37))


def test_dtype_is_preserved_and_float64_agrees():
    image64 = _random((1, 1, 64, 64), seed=7, dtype=torch.float64)
    bands64 = laplacian_pyramid(image64, 3)
    bands32 = laplacian_pyramid(image64.to(torch.float32), 3)
    assert all(band.dtype == torch.float64 for band in bands64)
    for band64, band32 in zip(bands64, bands32, strict=True):
        torch.testing.assert_close(band64.to(torch.float32), band32, atol=1e-6, rtol=0)


def test_level_limits():
    assert max_levels(256, 256) == 7
    assert max_levels(3, 100) == 1
    assert max_levels(2, 100) == 0
    image = _random((1, 1, 256, 256))
    assert laplacian_pyramid(image, 0)[0] is image
    assert tuple(laplacian_pyramid(image, 7)[-1].shape[-2:]) == (2, 2)
    with pytest.raises(ValueError):
        laplacian_pyramid(image, 8)
    with pytest.raises(ValueError):
        laplacian_pyramid(image, -1)
    with pytest.raises(ValueError):
        gaussian_blur(torch.zeros(1, 1, 2, 8))
    with pytest.raises(ValueError):
        upsample(torch.zeros(1, 1, 4, 4), size=(10, 8))
