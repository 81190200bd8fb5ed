"""VQ-f4 first stage: key conversion, layout, and parity with the official golden tensors (tiny)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from shmt_cli.engines.shmt import vq as V


def _read_tsv(path: Path, prefix: str) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for line in path.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, shape, _ = line.split("\t")
        if key.startswith(prefix):
            shapes[key[len(prefix) :]] = tuple(int(s) for s in shape.strip("()").split(",") if s.strip())
    return shapes


def _random_official(config: V.VqF4Config, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=gen) for k, s in V.official_vq_shapes(config).items()}


def _to_float(u8: torch.Tensor) -> torch.Tensor:
    return (u8.float() / 255 - 0.5) / 0.5


@pytest.fixture(scope="module")
def tiny_sd(golden_dir: Path) -> dict[str, torch.Tensor]:
    return {k: v.float() for k, v in load_file(golden_dir / "tiny_h4.safetensors").items()}


@pytest.fixture(scope="module")
def tiny_vq(tiny_sd):
    return V.load_vq(tiny_sd)


@pytest.fixture(scope="module")
def h4_io(golden_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(golden_dir / "tiny_h4_io.safetensors")


# --- layout -----------------------------------------------------------------------------------


def test_full_layout_matches_official_state_dict(golden_dir: Path) -> None:
    for variant in ("h0", "h4"):
        official = _read_tsv(golden_dir / f"state_dict_{variant}.tsv", V.SHMT_PREFIX)
        assert V.official_vq_shapes(V.VQ_F4_FULL) == official


def test_full_parameter_counts_match_reference() -> None:
    shapes = V.official_vq_shapes(V.VQ_F4_FULL)

    def count(prefix: str) -> int:
        return sum(torch.Size(s).numel() for k, s in shapes.items() if k.startswith(prefix))

    assert count("encoder.") == 22_337_411
    assert count("decoder.") == 32_960_771
    assert count("quantize.") == 8192 * 3
    assert count("") == 55_322_782


def test_tiny_layout_matches_golden(tiny_sd) -> None:
    golden = {
        k[len(V.SHMT_PREFIX) :]: tuple(v.shape) for k, v in tiny_sd.items() if k.startswith(V.SHMT_PREFIX)
    }
    assert V.official_vq_shapes(V.VQ_F4_TINY) == golden


@pytest.mark.parametrize("config", [V.VQ_F4_FULL, V.VQ_F4_TINY], ids=["full", "tiny"])
def test_conversion_fills_every_diffusers_tensor_with_matching_shape(config: V.VqF4Config) -> None:
    with torch.device("meta"):
        model = V.build_vq(config)
        official = {k: torch.empty(s) for k, s in V.official_vq_shapes(config).items()}
    target = model.state_dict()
    converted = V.convert_vq_state_dict(official).state_dict
    assert set(converted) == set(target)
    for key, tensor in converted.items():
        assert tensor.shape == target[key].shape, key


def test_decoder_levels_are_reversed_and_attention_reshaped() -> None:
    official = _random_official(V.VQ_F4_TINY)
    model = V.load_vq(official)
    # LDM up.0 is the full-resolution level: 32 channels, no upsampler; diffusers puts it last.
    assert torch.equal(
        model.decoder.up_blocks[2].resnets[0].conv1.weight, official["decoder.up.0.block.0.conv1.weight"]
    )
    assert model.decoder.up_blocks[2].upsamplers is None
    assert torch.equal(
        model.decoder.up_blocks[0].upsamplers[0].conv.weight, official["decoder.up.2.upsample.conv.weight"]
    )
    attn = model.encoder.mid_block.attentions[0]
    assert torch.equal(attn.to_q.weight, official["encoder.mid.attn_1.q.weight"][:, :, 0, 0])
    assert torch.equal(attn.to_out[0].weight, official["encoder.mid.attn_1.proj_out.weight"][:, :, 0, 0])
    assert torch.equal(attn.group_norm.bias, official["encoder.mid.attn_1.norm.bias"])
    assert attn.group_norm.eps == 1e-6 and attn.group_norm.num_groups == 32


def test_every_group_norm_is_32_groups_eps_1e6() -> None:
    with torch.device("meta"):
        model = V.build_vq(V.VQ_F4_FULL)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.GroupNorm)]
    # 2 per resnet (6 + 9 + 2 + 2), 1 per attention (2), 2 output norms.
    assert len(norms) == 2 * (6 + 9 + 2 + 2) + 2 + 2
    assert all(m.num_groups == 32 and m.eps == 1e-6 and m.affine for m in norms)


def test_downsample_pads_right_and_bottom_then_strided_conv() -> None:
    model = V.load_vq(_random_official(V.VQ_F4_TINY))
    down = model.encoder.down_blocks[0].downsamplers[0]
    x = torch.randn(1, 32, 9, 10, generator=torch.Generator().manual_seed(3))
    expected = F.conv2d(F.pad(x, (0, 1, 0, 1)), down.conv.weight, down.conv.bias, stride=2)
    with torch.no_grad():
        assert torch.allclose(down(x), expected, atol=1e-6)


def test_every_key_is_accounted_for_in_shmt_and_standalone_files() -> None:
    official = _random_official(V.VQ_F4_TINY)
    shmt = {V.SHMT_PREFIX + k: v for k, v in official.items()}
    shmt["model.diffusion_model.out.2.bias"] = torch.zeros(3)
    shmt["betas"] = torch.zeros(1000)
    conv = V.convert_vq_state_dict(shmt)
    assert set(conv.loaded) | set(conv.ignored) == set(shmt)
    assert set(conv.ignored) == {"model.diffusion_model.out.2.bias", "betas"}

    standalone = dict(official)
    standalone["loss.discriminator.main.0.weight"] = torch.zeros(4)
    standalone["loss.perceptual_loss.net.slice1.0.bias"] = torch.zeros(4)
    conv2 = V.convert_vq_state_dict(standalone)
    assert set(conv2.loaded) == set(official)
    assert all("loss" in reason for reason in conv2.ignored.values()) and len(conv2.ignored) == 2
    for key in conv.state_dict:
        assert torch.equal(conv.state_dict[key], conv2.state_dict[key])


def test_unknown_missing_or_misshaped_keys_are_refused() -> None:
    official = _random_official(V.VQ_F4_TINY)
    with pytest.raises(ValueError, match="unknown"):
        V.convert_vq_state_dict({**official, "encoder.extra.weight": torch.zeros(1)})
    partial = dict(official)
    del partial["decoder.mid.attn_1.v.bias"]
    with pytest.raises(ValueError, match=r"missing \['decoder.mid.attn_1.v.bias'\]"):
        V.convert_vq_state_dict(partial)
    bad = {**official, "quant_conv.weight": torch.zeros(3, 3)}
    with pytest.raises(ValueError, match=r"quant_conv\.weight"):
        V.convert_vq_state_dict(bad)


def test_quantize_picks_the_nearest_code() -> None:
    model = V.load_vq(_random_official(V.VQ_F4_TINY, seed=5))
    z = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(6))
    z_q, idx = V.quantize(model, z)
    codebook = model.quantize.embedding.weight
    rows = z.permute(0, 2, 3, 1).reshape(-1, 3)
    brute = torch.cdist(rows.double(), codebook.double()).argmin(dim=1)
    assert torch.equal(idx.reshape(-1), brute)
    assert idx.shape == (3, 8, 8) and z_q.shape == z.shape
    assert torch.allclose(z_q.permute(0, 2, 3, 1).reshape(-1, 3), codebook[brute], atol=1e-6)


LATENT_ATOL = 2e-5


# --- golden parity ------------------------------------------------------------------------------


def test_encode_matches_official_latents(tiny_vq, h4_io, golden_dir: Path) -> None:
    inputs = load_file(golden_dir / "tiny_inputs.safetensors")
    z_bg = V.encode(tiny_vq, _to_float(inputs["u8.source_bg_rgb"]))
    z_ref = V.encode(tiny_vq, _to_float(inputs["u8.ref_face_rgb"]))
    assert z_bg.shape == (2, 3, 64, 64)
    # 2e-5 absolute on |z| up to 3 (7e-6 relative): float32 convolution sums depend on the CPU's kernels;
    # this AMD EPYC host measures 1.06e-5 (2 threads) / 1.18e-5 (1 thread) against the golden machine.
    assert (z_bg - h4_io["enc.z_bg"]).abs().max() < LATENT_ATOL
    assert (z_ref - h4_io["enc.z_ref_LF"]).abs().max() < LATENT_ATOL


@pytest.mark.parametrize("io_file", ["tiny_h4_io", "tiny_h0_io", "tiny_model2_io"])
@pytest.mark.parametrize("steps", [4, 5])
def test_quant_indices_match_official_exactly(tiny_vq, golden_dir: Path, io_file: str, steps: int) -> None:
    io = load_file(golden_dir / f"{io_file}.safetensors")
    _, idx = V.quantize(tiny_vq, io[f"ddim{steps}.samples"])
    assert torch.equal(idx, io[f"ddim{steps}.quant_indices"].long())


def test_decode_matches_official_unclamped_image(tiny_vq, h4_io) -> None:
    decoded = V.decode(tiny_vq, h4_io["ddim5.samples"])
    assert decoded.shape == (2, 3, 256, 256)
    assert (decoded - h4_io["ddim5.decoded"]).abs().max() < 1e-4
    assert decoded.abs().max() > 1.0  # unclamped, as the official decode_first_stage


def test_lean_blocks_equal_diffusers_forward() -> None:
    """The lean encoder/decoder (no /output_scale_factor pass, in-place residual) give diffusers' output.

    Random weights with non-trivial GroupNorm affines, so every block contributes.
    """
    torch.manual_seed(3)
    vq = V.build_vq(V.VQ_F4_TINY)
    with torch.no_grad():
        for module in vq.modules():
            if isinstance(module, torch.nn.GroupNorm):
                module.weight.normal_(1.0, 0.2)
                module.bias.normal_(0.0, 0.2)
    image = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        latent = V.run_encoder(vq.encoder, image)
        expected_latent = vq.encoder(image)
        decoded = V.run_decoder(vq.decoder, latent)
        expected_decoded = vq.decoder(latent)
    assert latent.shape == (2, 3, 16, 16) and decoded.shape == (2, 3, 64, 64)
    assert (latent - expected_latent).abs().max() <= 1e-5 * expected_latent.abs().max()
    assert (decoded - expected_decoded).abs().max() <= 1e-5 * expected_decoded.abs().max()
    assert decoded.std() > 0.01  # a live decoder, not a constant image


def test_bf16_vq_keeps_float32_codes_and_stays_near_fp32(tiny_vq, h4_io) -> None:
    """--vq-dtype bf16: convolutions in bf16, the codebook (and so the snapping) in float32, outputs
    float32, images within a few 8-bit levels of the float32 VQ."""
    import copy

    half = V.cast_vq(copy.deepcopy(tiny_vq), torch.bfloat16)
    assert V.vq_dtype(half) == torch.bfloat16 and V.vq_dtype(tiny_vq) == torch.float32
    assert half.decoder.conv_out.weight.dtype == torch.bfloat16
    assert half.quantize.embedding.weight.dtype == torch.float32
    samples = h4_io["ddim5.samples"]
    image32, codes32 = V.decode_with_indices(tiny_vq, samples)
    image16, codes16 = V.decode_with_indices(half, samples)
    assert image16.dtype == torch.float32 and torch.equal(codes16, codes32)  # same latent, same codes
    eight_bit = ((image16 - image32).abs() * 127.5).flatten()
    assert eight_bit.mean() < 2.0 and eight_bit.max() > 0  # rounded, but close
    pixels = torch.rand(1, 3, 64, 64) * 2 - 1
    latent32, latent16 = V.encode(tiny_vq, pixels), V.encode(half, pixels)
    assert latent16.dtype == torch.float32
    assert (latent16 - latent32).abs().max() < 0.05 * latent32.abs().max()
