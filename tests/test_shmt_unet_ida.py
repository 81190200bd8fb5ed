"""SHMT UNet and IDA: official key layout, parameter counts and parity with the golden tensors."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from shmt_cli.engines.shmt.config import (
    EMA_PREFIX,
    IDA_PREFIX,
    UNET_PREFIX,
    CheckpointMismatch,
    UNetConfig,
    variant_config,
)
from shmt_cli.engines.shmt.ida import (
    IGNORED_IDA_KEYS,
    PreparedReference,
    ShmtIda,
    blend_warps,
    correspondence_warp,
    label_ids,
    load_official_ida,
    normalized_positions,
)
from shmt_cli.engines.shmt.model import DenoiserInputs, ShmtDenoiser
from shmt_cli.engines.shmt.unet import AttentionBlock, ShmtUNet, ema_key, load_official_unet

safetensors_torch = pytest.importorskip("safetensors.torch")

WARP_ATOL = 5e-4
EPS_ATOL = 2e-4
SPEC_UNET_PARAMS = {0: 274_294_051, 4: 274_263_811}
SPEC_IDA_PARAMS = {0: 11_681_889 - 816_480, 4: 11_582_529 - 725_760}


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _tsv_rows(path: Path, prefix: str) -> list[tuple[str, tuple[int, ...]]]:
    rows = []
    for line in path.read_text().splitlines():
        if line.startswith("#") or not line.startswith(prefix):
            continue
        key, shape, _dtype = line.split("\t")
        dims = tuple(int(d) for d in shape.strip("()").split(",") if d.strip())
        rows.append((key[len(prefix) :], dims))
    return rows


# ------------------------------------------------------------------------------------------------
# Configs and full-size layout (built on "meta": no memory, no init cost)


def test_variant_configs_follow_the_spec_channel_table() -> None:
    h0, h4 = variant_config(0), variant_config(4)
    assert (h0.unet.in_channels, h4.unet.in_channels) == (121, 106)
    assert h0.ida.in_channels_list == (22, 83, 70)
    assert h4.ida.in_channels_list == (22, 68, 70)
    assert h0.ida.encoder_in_channels == (24, 85, 72)
    assert (h0.content_channels, h4.content_channels) == (64, 49)
    tiny = variant_config(0, "tiny")
    assert (tiny.unet.model_channels, tiny.unet.num_head_channels, tiny.ida.model_channels) == (32, 8, 32)
    assert tiny.ida.ngf == 64 and tiny.unet.in_channels == 121
    with pytest.raises(ValueError):
        variant_config(2)
    with pytest.raises(ValueError):
        variant_config(4, "huge")  # type: ignore[arg-type]


@pytest.mark.parametrize("level", [0, 4])
def test_full_size_parameter_counts_match_spec(level: int) -> None:
    config = variant_config(level, "full")
    with torch.device("meta"):
        unet, ida = ShmtUNet(config.unet), ShmtIda(config.ida)
    assert _count(unet) == SPEC_UNET_PARAMS[level]
    assert _count(ida) == SPEC_IDA_PARAMS[level]


@pytest.mark.parametrize("level", [0, 4])
def test_full_size_state_dict_equals_official_keys_and_shapes(golden_dir: Path, level: int) -> None:
    config = variant_config(level, "full")
    with torch.device("meta"):
        unet, ida = ShmtUNet(config.unet), ShmtIda(config.ida)
    tsv = golden_dir / f"state_dict_h{level}.tsv"
    ours_unet = [(k, tuple(v.shape)) for k, v in unet.state_dict().items()]
    assert ours_unet == _tsv_rows(tsv, UNET_PREFIX)
    official_ida = [(k, s) for k, s in _tsv_rows(tsv, IDA_PREFIX) if not k.startswith("proj_convs.")]
    assert [(k, tuple(v.shape)) for k, v in ida.state_dict().items()] == official_ida
    # The EMA flattening covers every UNet tensor of the checkpoint.
    ema_rows = {k for k, _ in _tsv_rows(tsv, EMA_PREFIX)}
    assert {ema_key(k)[len(EMA_PREFIX) :] for k, _ in ours_unet} == ema_rows - {"decay", "num_updates"}


@pytest.mark.parametrize("level", [0, 4])
def test_full_size_official_key_set_is_fully_accounted_for(golden_dir: Path, level: int) -> None:
    # Every key of a full official checkpoint, as shape-only "meta" tensors.
    checkpoint = {
        key: torch.empty(shape, device="meta")
        for key, shape in _tsv_rows(golden_dir / f"state_dict_h{level}.tsv", "")
    }
    assert len(checkpoint) == 1085
    config = variant_config(level, "full")
    with torch.device("meta"):
        unet, ida = ShmtUNet(config.unet), ShmtIda(config.ida)
    unet_report = load_official_unet(unet, {"state_dict": checkpoint}, assign=True)
    ida_report = load_official_ida(ida, checkpoint, assign=True)

    assert unet_report.complete and len(unet_report.loaded) == 368
    assert all(key.startswith("model_ema.diffusion_model") for key in unet_report.loaded.values())
    assert set(unet_report.ignored) == {
        k for k in checkpoint if k.startswith((UNET_PREFIX, EMA_PREFIX))
    } - set(unet_report.loaded.values())
    assert len(unet_report.ignored) == 368 + 2
    assert ida_report.complete and len(ida_report.loaded) == 106 and len(ida_report.ignored) == 24
    for report, prefixes in ((unet_report, (UNET_PREFIX, EMA_PREFIX)), (ida_report, (IDA_PREFIX,))):
        used = set(report.loaded.values()) | set(report.ignored)
        assert used | set(report.foreign) == set(checkpoint)
        assert not used & set(report.foreign)
        assert all(not key.startswith(prefixes) for key in report.foreign)


# ------------------------------------------------------------------------------------------------
# Building blocks against independent straightforward formulas


def test_attention_block_equals_legacy_qkv_attention() -> None:
    torch.manual_seed(0)
    block = AttentionBlock(64, 16).eval()
    with torch.no_grad():
        block.proj_out.weight.normal_(0, 0.2)
        x = torch.randn(2, 64, 6, 5)
        got = block(x)
        # Legacy formula: heads own contiguous [q|k|v] blocks, scale d^-1/4 on both q and k.
        b, c, height, width = x.shape
        qkv = block.qkv(block.norm(x).reshape(b, c, -1))
        q, k, v = qkv.reshape(b * 4, 3 * 16, -1).split(16, dim=1)
        scale = 1 / math.sqrt(math.sqrt(16))
        weights = torch.softmax(torch.einsum("bct,bcs->bts", q * scale, k * scale), dim=-1)
        attended = torch.einsum("bts,bcs->bct", weights, v).reshape(b, c, -1)
        expected = x + block.proj_out(attended).reshape(b, c, height, width)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_correspondence_warp_equals_masked_softmax_formula() -> None:
    torch.manual_seed(1)
    b, c, n, m, v = 2, 8, 12, 10, 5
    query = normalized_positions(torch.randn(b, c, 3, 4))
    reference = normalized_positions(torch.randn(b, c, 2, 5))
    labels_q = torch.randint(0, 3, (b, n))
    labels_r = torch.randint(0, 3, (b, m))
    labels_q[:, 0] = 7  # a label the reference lacks: uniform weights over all reference positions
    values = torch.randn(b, v, m)
    got = correspondence_warp(query, reference, labels_q, labels_r, values)

    same = (labels_r[:, :, None] == labels_q[:, None, :]).double()
    energy = 100 * torch.einsum("bcm,bcn->bmn", reference.double(), query.double()) * same
    expected = torch.einsum("bvm,bmn->bvn", values.double(), torch.softmax(energy, dim=1))
    torch.testing.assert_close(got.double(), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[:, :, 0], values.mean(dim=2), atol=1e-6, rtol=1e-6)
    chunked = correspondence_warp(query, reference, labels_q, labels_r, values, query_chunk=5)
    torch.testing.assert_close(chunked, got, atol=1e-6, rtol=1e-6)


def test_normalized_positions_and_label_ids() -> None:
    features = torch.randn(1, 4, 3, 3) * 5 + 2
    flat = normalized_positions(features)
    centred = features.flatten(2) - features.flatten(2).mean(dim=2, keepdim=True)
    torch.testing.assert_close(flat * (centred.norm(dim=1, keepdim=True) + 1e-5), centred)
    onehot = torch.zeros(1, 19, 2, 2)
    onehot[0, 4, 0, 0] = onehot[0, 18, 1, 1] = onehot[0, 0, 0, 1] = 1
    assert label_ids(onehot, -1).tolist() == [[4, 0, -1, 18]]


# ------------------------------------------------------------------------------------------------
# Loader accounting (small random modules; no reference material needed)

SMALL_UNET = UNetConfig(in_channels=5, model_channels=32, channel_mult=(1, 2), attention_downsample=(2,))


def _official_unet_dict(module: ShmtUNet, with_ema: bool) -> dict[str, torch.Tensor]:
    state = {UNET_PREFIX + k: v.clone() for k, v in module.state_dict().items()}
    if with_ema:
        state |= {ema_key(k): torch.full_like(v, 0.5) for k, v in module.state_dict().items()}
        state |= {"model_ema.decay": torch.tensor(0.9999), "model_ema.num_updates": torch.tensor(7)}
    state |= {"first_stage_model.quant_conv.weight": torch.zeros(3, 3, 1, 1), "betas": torch.zeros(1000)}
    return state


def test_unet_loader_prefers_ema_and_accounts_for_every_key() -> None:
    source, target = ShmtUNet(SMALL_UNET), ShmtUNet(SMALL_UNET)
    state = _official_unet_dict(source, with_ema=True)
    report = load_official_unet(target, {"state_dict": state, "epoch": 3})
    n = len(source.state_dict())
    assert report.complete and len(report.loaded) == n
    assert all(v.startswith(EMA_PREFIX) for v in report.loaded.values())
    assert all(torch.all(p == 0.5) for p in target.state_dict().values())
    assert len(report.ignored) == n + 2 and "model_ema.decay" in report.ignored
    assert sorted(report.foreign) == ["betas", "first_stage_model.quant_conv.weight"]
    accounted = set(report.loaded.values()) | set(report.ignored) | set(report.foreign)
    assert accounted == set(state)

    raw = load_official_unet(target, state, prefer_ema=False)
    assert all(v.startswith(UNET_PREFIX) for v in raw.loaded.values())
    for name, tensor in target.state_dict().items():
        assert torch.equal(tensor, source.state_dict()[name])
    assert all("prefer_ema=False" in raw.ignored[ema_key(k)] for k in source.state_dict())


def test_unet_loader_is_strict() -> None:
    source = ShmtUNet(SMALL_UNET)
    state = _official_unet_dict(source, with_ema=False)
    target = ShmtUNet(SMALL_UNET)
    assert load_official_unet(target, state).complete  # no shadows: raw weights

    incomplete = dict(state)
    del incomplete[UNET_PREFIX + "out.2.bias"]
    with pytest.raises(CheckpointMismatch) as info:
        load_official_unet(target, incomplete)
    assert info.value.report.missing == ["out.2.bias"]
    lenient = load_official_unet(target, incomplete, strict=False)
    assert lenient.missing == ["out.2.bias"] and not lenient.complete

    extra = dict(state) | {UNET_PREFIX + "label_emb.weight": torch.zeros(2)}
    with pytest.raises(CheckpointMismatch) as info:
        load_official_unet(target, extra)
    assert info.value.report.unexpected == [UNET_PREFIX + "label_emb.weight"]

    wrong = dict(state) | {UNET_PREFIX + "out.2.bias": torch.zeros(4)}
    before = target.out[2].bias.detach().clone()
    with pytest.raises(ValueError, match="shape"):
        load_official_unet(target, wrong)
    assert torch.equal(target.out[2].bias, before)  # nothing written on failure


def test_unet_loader_assigns_into_meta_module() -> None:
    source = ShmtUNet(SMALL_UNET)
    state = {k: v.half() for k, v in _official_unet_dict(source, with_ema=False).items()}
    with torch.device("meta"):
        target = ShmtUNet(SMALL_UNET)
    load_official_unet(target, state, assign=True)
    weight = target.input_blocks[0][0].weight
    assert weight.device.type == "cpu" and weight.dtype == torch.float32
    torch.testing.assert_close(weight, source.input_blocks[0][0].weight.half().float())


# ------------------------------------------------------------------------------------------------
# Golden parity (tiny models, batch 2)


def _to_float(u8: torch.Tensor) -> torch.Tensor:
    return (u8.float() / 255 - 0.5) / 0.5


def _onehot(seg: torch.Tensor) -> torch.Tensor:
    return (seg == torch.arange(19)[None, :, None, None]).float()


@pytest.fixture(scope="module")
def tiny_h4_weights(golden_dir: Path) -> dict[str, torch.Tensor]:
    return safetensors_torch.load_file(golden_dir / "tiny_h4.safetensors")


@pytest.fixture(scope="module", params=[0, 4], ids=["h0", "h4"])
def golden_case(request: pytest.FixtureRequest, golden_dir: Path, tiny_h4_weights: dict) -> dict:
    level = request.param
    state = dict(tiny_h4_weights)
    if level == 0:
        state.update(safetensors_torch.load_file(golden_dir / "tiny_h0.safetensors"))
    state = {k: v.float() if v.dtype == torch.float16 else v for k, v in state.items()}
    inputs = safetensors_torch.load_file(golden_dir / "tiny_inputs.safetensors")
    io = safetensors_torch.load_file(golden_dir / f"tiny_h{level}_io.safetensors")

    config = variant_config(level, "tiny")
    denoiser = ShmtDenoiser(config).eval()
    unet, ida = denoiser.unet, denoiser.ida
    unet_report = load_official_unet(unet, state)
    ida_report = load_official_ida(ida, state)

    content = torch.cat(
        [io["pre.source_HF_detail"], F.pixel_unshuffle(_to_float(inputs["u8.source_depth_bgr"]), 4)], dim=1
    )
    ida_args = {
        "content": content,
        "z_ref": io["enc.z_ref_LF"],
        "ref_pixels": F.pixel_unshuffle(_to_float(inputs["u8.ref_face_rgb"]), 4),
        "mask64": inputs["pre.source_face_seg_64"],
        "onehot_src": _onehot(inputs["u8.source_seg"]),
        "onehot_ref": _onehot(inputs["u8.ref_seg"]),
    }
    denoiser_inputs = DenoiserInputs(z_bg=io["enc.z_bg"], **ida_args)
    z_t, t = inputs["noise.unet_x_noisy"], inputs["noise.unet_t"]
    with torch.no_grad():
        out = denoiser(z_t, t, denoiser_inputs, "release", official_outputs=True)
        full = torch.cat([out.warped, out.coords], dim=1)
        # The inference split (prepare once, then epsilon per step), end to end on one variant.
        released = None
        if level == 4:
            prepared = denoiser.prepare(denoiser_inputs, "release")
            released = (denoiser.warped(prepared), denoiser.epsilon(z_t, t, prepared))
    return {
        "level": level,
        "state": state,
        "unet": unet,
        "ida": ida,
        "unet_report": unet_report,
        "ida_report": ida_report,
        "io": io,
        "args": ida_args,
        "z_t": z_t,
        "t": t,
        "full": full,
        "eps": out.eps,
        "proportion": out.w,
        "released": released,
    }


def test_golden_loaders_account_for_every_tiny_key(golden_case: dict) -> None:
    state, unet_report, ida_report = (
        golden_case["state"],
        golden_case["unet_report"],
        golden_case["ida_report"],
    )
    assert unet_report.complete and ida_report.complete
    assert len(unet_report.loaded) == 368 and not unet_report.ignored  # the tiny file has no EMA shadows
    assert len(ida_report.loaded) == 106
    assert set(ida_report.ignored) == {k for k in state if k.startswith(IDA_PREFIX + "proj_convs.")}
    assert len(ida_report.ignored) == 24
    assert set(ida_report.ignored.values()) == {IGNORED_IDA_KEYS["proj_convs."]}
    for report in (unet_report, ida_report):
        accounted = set(report.loaded.values()) | set(report.ignored) | set(report.foreign)
        assert accounted == set(state) and not set(report.foreign) & set(report.loaded.values())


def test_golden_ida_warp_and_proportion(golden_case: dict) -> None:
    golden = golden_case["io"]["unet.corr_all_LF_warp_with_coor"]
    full = golden_case["full"]
    assert full.shape == golden.shape == (2, 55, 64, 64)
    assert (full - golden).abs().max().item() <= WARP_ATOL
    torch.testing.assert_close(golden_case["proportion"], golden_case["io"]["unet.corr_proportion"])
    # The inference split gives exactly the forward's warp, and its ε up to the rounding of the
    # channels_last input buffer (~1e-5).
    if golden_case["released"] is not None:
        warped, eps = golden_case["released"]
        assert torch.equal(warped, full[:, :51])
        torch.testing.assert_close(eps, golden_case["eps"], atol=1e-4, rtol=0)


def test_golden_denoiser_eps_from_our_warp(golden_case: dict) -> None:
    # ε from the raw inputs through our IDA and the UNet input assembly (spec §2.2).
    error = (golden_case["eps"] - golden_case["io"]["unet.e_t"]).abs().max().item()
    assert error <= EPS_ATOL


def test_golden_unet_eps(golden_case: dict) -> None:
    io, unet = golden_case["io"], golden_case["unet"]
    golden_warp = io["unet.corr_all_LF_warp_with_coor"][:, :51]
    x = torch.cat([golden_case["z_t"], io["enc.z_bg"], golden_case["args"]["content"], golden_warp], 1)
    with torch.no_grad():
        eps = unet(x, golden_case["t"])
    assert eps.shape == (2, 3, 64, 64)
    assert (eps - io["unet.e_t"]).abs().max().item() <= EPS_ATOL


def test_golden_unet_channels_last_and_bf16_autocast(golden_case: dict) -> None:
    io, unet = golden_case["io"], golden_case["unet"]
    golden_warp = io["unet.corr_all_LF_warp_with_coor"][:, :51]
    x = torch.cat([golden_case["z_t"], io["enc.z_bg"], golden_case["args"]["content"], golden_warp], 1)
    fast = ShmtUNet(unet.config).eval()
    fast.load_state_dict(unet.state_dict())
    fast.to(memory_format=torch.channels_last)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        eps_cl = fast(x_cl, golden_case["t"])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            eps_bf16 = fast(x_cl, golden_case["t"])
    golden = io["unet.e_t"]
    assert eps_cl.dtype == torch.float32 and (eps_cl - golden).abs().max().item() <= EPS_ATOL
    assert eps_bf16.dtype == torch.float32
    # bf16 keeps ~3 significant digits: a loose but discriminating bound (|e_t| mean ≈ 0.25).
    assert (eps_bf16 - golden).abs().mean().item() < 0.02
    assert (eps_bf16 - golden).abs().max().item() < 0.2
    # bf16 weights without autocast (no per-call weight casts); GroupNorm and attention stay float32.
    fast.to(torch.bfloat16)
    with torch.no_grad():
        eps_bf16_weights = fast(x_cl, golden_case["t"])
    assert eps_bf16_weights.dtype == torch.float32
    assert (eps_bf16_weights - golden).abs().mean().item() < 0.02
    assert (eps_bf16_weights - golden).abs().max().item() < 0.2


def test_blend_warps_formula() -> None:
    a0, a1 = torch.randn(2, 53, 4, 4), torch.randn(2, 53, 4, 4)
    w, mask = torch.tensor([[0.25], [0.9]]), torch.rand(2, 1, 4, 4)
    expected = (w[:, :, None, None] * a0[:, :51] + (1 - w[:, :, None, None]) * a1[:, :51]) * mask
    torch.testing.assert_close(blend_warps(a0, a1, w, mask), expected)


def _small_ida_inputs(level: int = 4, side: int = 8) -> dict[str, torch.Tensor]:
    """Random IDA inputs on a side x side latent grid (the module works at any grid size)."""
    content_channels = variant_config(level).content_channels
    seg_src = torch.randint(0, 4, (2, 1, 4 * side, 4 * side))
    seg_ref = torch.randint(0, 4, (2, 1, 4 * side, 4 * side))
    return {
        "content": torch.randn(2, content_channels, side, side),
        "z_ref": torch.randn(2, 3, side, side),
        "ref_pixels": torch.rand(2, 48, side, side) * 2 - 1,
        "mask64": torch.rand(2, 1, side, side),
        "onehot_src": _onehot(seg_src),
        "onehot_ref": _onehot(seg_ref),
    }


def _expand(reference: PreparedReference, batch: int) -> PreparedReference:
    """A batch-1 prepared reference broadcast to `batch` sources, without copying."""
    assert reference.values.shape[0] == 1
    return PreparedReference(
        values=reference.values.expand(batch, -1, -1),
        features=reference.features.expand(batch, -1, -1),
        labels=reference.labels.expand(batch, -1),
    )


def _tiny_denoiser(level: int, seed: int) -> ShmtDenoiser:
    torch.manual_seed(seed)
    denoiser = ShmtDenoiser(variant_config(level, "tiny")).eval()
    for module in denoiser.unet.modules():  # give the zero-initialised output convs a signal
        if isinstance(module, torch.nn.Conv2d):
            module.weight.data.normal_(0, 0.05)
    return denoiser


def test_denoiser_forms_agree_and_ida_ignores_autocast_by_default() -> None:
    denoiser = _tiny_denoiser(4, seed=3)
    ida = denoiser.ida
    args = _small_ida_inputs()
    inputs = DenoiserInputs(z_bg=torch.randn(2, 3, 8, 8), **args)
    z_t, t = torch.randn(2, 3, 8, 8), torch.tensor([900, 20])
    mask = args["mask64"]
    with torch.no_grad():
        released = denoiser(z_t, t, inputs, "release")
        official = denoiser(z_t, t, inputs, "release", official_outputs=True)
        train = denoiser(z_t, t, inputs, "train")
        reference = ida.prepare_reference(args["z_ref"], args["ref_pixels"], args["onehot_ref"])
        a0 = ida.latent_warp_prepared(z_t, mask, args["onehot_src"], reference)
        a1 = ida.content_warp_prepared(args["content"], args["onehot_src"], reference)
        unet_in = torch.cat([z_t, inputs.z_bg, args["content"], train.warped], dim=1)
        train_eps = denoiser.unet(unet_in, t)
        prepared_release = denoiser.prepare(inputs, "release")
        prepared_train = denoiser.prepare(inputs, "train")
        split_release = denoiser.epsilon(z_t, t, prepared_release)
        split_train = denoiser.epsilon(z_t, t, prepared_train)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            released_autocast = denoiser(z_t, t, inputs, "release").warped
        ida.autocast_encoders = True
        with torch.autocast("cpu", dtype=torch.bfloat16):
            released_bf16 = denoiser(z_t, t, inputs, "release").warped
    assert released.eps.shape == (2, 3, 8, 8) and released.warped.shape == (2, 51, 8, 8)
    assert released.w is None and released.coords is None
    assert train.w.shape == (2, 1) and train.coords.shape == (2, 4, 8, 8)
    assert torch.equal(official.eps, released.eps) and torch.equal(official.w, train.w)
    assert torch.equal(released.warped, a1[:, :51] * mask)
    assert torch.equal(train.warped, blend_warps(a0, a1, train.w, mask))
    assert torch.equal(train.coords, torch.cat([a0[:, 51:], a1[:, 51:]], dim=1))
    assert torch.equal(train.eps, train_eps)
    assert (train.eps - released.eps).abs().max().item() > 1e-3  # the forms really differ
    torch.testing.assert_close(split_release, released.eps, atol=1e-5, rtol=0)
    torch.testing.assert_close(split_train, train.eps, atol=1e-5, rtol=0)
    torch.testing.assert_close(ida.proportion(torch.tensor(900)), train.w[:1])  # one timestep for the batch
    assert torch.equal(released_autocast, released.warped)
    assert not torch.equal(released_bf16, released.warped)  # the opt-in bf16 path really runs in bf16
    with pytest.raises(ValueError):
        denoiser(z_t, t, inputs, "paper")  # type: ignore[arg-type]


def test_denoiser_trains() -> None:
    denoiser = _tiny_denoiser(4, seed=6).train()
    args = _small_ida_inputs()
    inputs = DenoiserInputs(z_bg=torch.randn(2, 3, 8, 8), **args)
    out = denoiser(torch.randn(2, 3, 8, 8), torch.tensor([500, 10]), inputs, "train")
    out.eps.square().mean().backward()
    for part in (
        denoiser.unet.input_blocks[0],
        denoiser.ida.sd_enc,
        denoiser.ida.source_enc,
        denoiser.ida.ref_enc,
    ):
        grads = [p.grad for p in part.parameters()]
        assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
    assert denoiser.ida.proportion_prediction[0].weight.grad.abs().sum() > 0


def test_prepared_reference_is_reused_across_sources() -> None:
    torch.manual_seed(4)
    ida = ShmtIda(variant_config(0, "tiny").ida).eval()
    args = _small_ida_inputs(level=0)
    one_ref = {k: args[k][:1].expand_as(args[k]) for k in ("z_ref", "ref_pixels", "onehot_ref")}
    z_t = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        per_pair = ida.prepare_reference(one_ref["z_ref"], one_ref["ref_pixels"], one_ref["onehot_ref"])
        a0 = ida.latent_warp_prepared(z_t, args["mask64"], args["onehot_src"], per_pair)
        a1 = ida.content_warp_prepared(args["content"], args["onehot_src"], per_pair)
        prepared = _expand(
            ida.prepare_reference(args["z_ref"][:1], args["ref_pixels"][:1], args["onehot_ref"][:1]), 2
        )
        prepared_a0 = ida.latent_warp_prepared(z_t, args["mask64"], args["onehot_src"], prepared)
        prepared_a1 = ida.content_warp_prepared(args["content"], args["onehot_src"], prepared)
    # Batch-1 and batch-2 convolutions round differently; the ×100 softmax amplifies that a little.
    torch.testing.assert_close(prepared_a0, a0, atol=1e-4, rtol=0)
    torch.testing.assert_close(prepared_a1, a1, atol=1e-4, rtol=0)


def test_unet_accepts_one_timestep_for_the_batch() -> None:
    torch.manual_seed(5)
    unet = ShmtUNet(SMALL_UNET).eval()
    for module in unet.modules():  # give the zero-initialised output convs a signal
        if isinstance(module, torch.nn.Conv2d):
            module.weight.data.normal_(0, 0.05)
    x = torch.randn(2, 5, 16, 16)
    with torch.no_grad():
        shared = unet(x, torch.tensor(321))
        per_sample = unet(x, torch.tensor([321, 321]))
        other = unet(x, torch.tensor([321, 900]))
    assert shared.shape == (2, 3, 16, 16)
    torch.testing.assert_close(shared, per_sample)
    assert not torch.allclose(other[1], per_sample[1]) and torch.allclose(other[0], per_sample[0])
