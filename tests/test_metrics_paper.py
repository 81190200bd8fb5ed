"""The paper's metrics: FID maths, checkpoint layouts and loaders, DINO CLS / Key-sim, end to end.

Real weights cannot be had here, so checkpoints with random weights are written in the official
layouts (DINO and pt_inception key names) with torch.save and read back through the real loaders.
"""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch
from torch import nn

from shmt_cli.checkpoint import CheckpointError
from shmt_cli.metrics import dino, fid, inception, paper, vit

TINY = vit.ViTConfig(patch_size=8, dim=64, depth=2, heads=4, mlp_dim=128, train_size=32)


# ----------------------------------------------------------------------------- images


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    rows = np.linspace(0, image.shape[0] - 1, size).round().astype(int)
    cols = np.linspace(0, image.shape[1] - 1, size).round().astype(int)
    return np.ascontiguousarray(image[rows][:, cols])


@pytest.fixture(scope="module")
def photos(astronaut_rgb: np.ndarray) -> list[np.ndarray]:
    """Three different (96, 96, 3) uint8 images: a face crop, the whole photo mirrored, a colour ramp."""
    face = _resize(astronaut_rgb[20:260, 120:360], 96)
    mirrored = _resize(astronaut_rgb[:, ::-1], 96)
    ramp = np.zeros((96, 96, 3), np.uint8)
    ramp[..., 0] = np.linspace(0, 255, 96, dtype=np.uint8)[None, :]
    ramp[..., 2] = np.linspace(255, 0, 96, dtype=np.uint8)[:, None]
    return [face, mirrored, ramp]


# ----------------------------------------------------------------------------- FID maths


def test_frechet_distance_diagonal_covariances_closed_form() -> None:
    rng = np.random.default_rng(0)
    mean1, mean2 = rng.normal(size=8), rng.normal(size=8)
    var1, var2 = rng.uniform(0.1, 3.0, 8), rng.uniform(0.1, 3.0, 8)
    expected = np.sum((mean1 - mean2) ** 2) + np.sum((np.sqrt(var1) - np.sqrt(var2)) ** 2)
    assert fid.frechet_distance(mean1, np.diag(var1), mean2, np.diag(var2)) == pytest.approx(
        expected, rel=1e-10
    )


def test_frechet_distance_non_commuting_2x2_closed_form() -> None:
    # For a 2x2 matrix M with non-negative eigenvalues, tr(M^(1/2)) = sqrt(tr M + 2 sqrt(det M)).
    cov1 = np.array([[2.0, 0.7], [0.7, 0.5]])
    cov2 = np.array([[0.3, -0.2], [-0.2, 1.4]])
    product = cov1 @ cov2
    assert not np.allclose(product, product.T)  # the covariances do not commute
    trace_root = np.sqrt(np.trace(product) + 2.0 * np.sqrt(np.linalg.det(product)))
    mean1, mean2 = np.array([0.5, -1.0]), np.array([0.0, 2.0])
    expected = 0.25 + 9.0 + np.trace(cov1) + np.trace(cov2) - 2.0 * trace_root
    assert fid.frechet_distance(mean1, cov1, mean2, cov2) == pytest.approx(expected, rel=1e-10)


def test_frechet_distance_scaled_full_covariance() -> None:
    # cov2 = c^2 cov1 gives tr((cov1 cov2)^(1/2)) = c tr(cov1), hence FID = |dmu|^2 + (1 - c)^2 tr(cov1).
    rng = np.random.default_rng(1)
    basis = rng.normal(size=(16, 16))
    cov1 = basis @ basis.T / 16
    mean1, mean2 = rng.normal(size=16), rng.normal(size=16)
    scale = 1.7
    expected = np.sum((mean1 - mean2) ** 2) + (1 - scale) ** 2 * np.trace(cov1)
    got = fid.frechet_distance(mean1, cov1, mean2, scale**2 * cov1)
    assert got == pytest.approx(expected, rel=1e-9)


def test_identical_feature_sets_give_zero_and_distance_is_symmetric() -> None:
    rng = np.random.default_rng(2)
    few = rng.normal(size=(12, 64))  # fewer vectors than dimensions: nuclear-norm path
    many = rng.normal(size=(200, 32))  # more vectors than dimensions: covariance path
    assert fid.fid_from_features(few, few) == pytest.approx(0.0, abs=1e-9)
    assert fid.fid_from_features(many, many[::-1]) == pytest.approx(0.0, abs=1e-9)
    other = rng.normal(loc=0.3, scale=1.5, size=(9, 64))
    assert fid.fid_from_features(few, other) > 1.0
    assert fid.fid_from_features(few, other) == pytest.approx(fid.fid_from_features(other, few), rel=1e-10)


def test_small_set_path_matches_covariance_path() -> None:
    rng = np.random.default_rng(3)
    first = rng.normal(size=(10, 48))
    second = rng.gamma(2.0, size=(7, 48))
    stats1, stats2 = fid.feature_statistics(first), fid.feature_statistics(second)
    by_covariance = fid.frechet_distance(stats1.mean, stats1.cov, stats2.mean, stats2.cov)
    assert fid.fid_from_features(first, second) == pytest.approx(by_covariance, rel=1e-7)


def test_feature_statistics_need_two_vectors() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        fid.feature_statistics(np.zeros((1, 2048)))
    with pytest.raises(ValueError, match="mismatched"):
        fid.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


# ----------------------------------------------------------------------------- checkpoint layouts


def test_dino_vitb8_layout_matches_the_release_names() -> None:
    shapes = vit.expected_shapes()
    # 12 blocks x 12 tensors + cls_token, pos_embed, patch_embed.proj.{weight,bias}, norm.{weight,bias}.
    assert len(shapes) == 150
    assert shapes["cls_token"] == (1, 1, 768)
    assert shapes["pos_embed"] == (1, 1 + 28 * 28, 768)
    assert shapes["patch_embed.proj.weight"] == (768, 3, 8, 8)
    assert shapes["blocks.11.attn.qkv.weight"] == (2304, 768)
    assert shapes["blocks.11.attn.qkv.bias"] == (2304,)
    assert shapes["blocks.0.attn.proj.weight"] == (768, 768)
    assert shapes["blocks.5.mlp.fc1.weight"] == (3072, 768)
    assert shapes["blocks.5.mlp.fc2.weight"] == (768, 3072)
    assert shapes["blocks.7.norm2.bias"] == (768,)
    assert shapes["norm.weight"] == (768,)
    # DINO's ViT-B/8 has 85.8M parameters: patch 148,224 + cls 768 + pos 602,880
    # + 12 x 7,087,872 per block + final norm 1,536.
    assert sum(int(np.prod(s)) for s in shapes.values()) == 85_807_872


def test_fid_inception_layout_matches_pt_inception_names() -> None:
    shapes = inception.expected_shapes()
    assert shapes["Conv2d_1a_3x3.conv.weight"] == (32, 3, 3, 3)
    assert shapes["Conv2d_4a_3x3.bn.running_var"] == (192,)
    assert shapes["Mixed_5b.branch_pool.conv.weight"] == (32, 192, 1, 1)
    assert shapes["Mixed_5d.branch5x5_2.conv.weight"] == (64, 48, 5, 5)
    assert shapes["Mixed_6a.branch3x3.conv.weight"] == (384, 288, 3, 3)
    assert shapes["Mixed_6e.branch7x7dbl_5.conv.weight"] == (192, 192, 1, 7)
    assert shapes["Mixed_7a.branch7x7x3_4.conv.weight"] == (192, 192, 3, 3)
    assert shapes["Mixed_7c.branch3x3dbl_3b.conv.weight"] == (384, 384, 3, 1)
    assert shapes["Mixed_7c.branch_pool.conv.weight"] == (192, 2048, 1, 1)
    assert shapes["fc.weight"] == (1008, 2048)
    assert not any(k.startswith("AuxLogits") for k in shapes)
    assert not any(k.endswith(".conv.bias") for k in shapes)


def test_fid_inception_pool_branches_follow_the_tf_graph() -> None:
    # A block whose convolutions are identities exposes its pool branch: count_include_pad=False
    # averages (Mixed_5b .. 7b) keep a constant image constant at the border; Mixed_7c max-pools.
    block_avg = inception.InceptionE(4, pool="avg").eval()
    block_max = inception.InceptionE(4, pool="max").eval()
    for block in (block_avg, block_max):
        with torch.no_grad():
            conv = block.branch_pool.conv
            conv.weight.zero_()
            conv.weight[:, 0, 0, 0] = 1.0
            block.branch_pool.bn.eps = 0.0
    spike = torch.zeros(1, 4, 5, 5)
    spike[0, 0, 2, 2] = 1.0
    with torch.no_grad():
        pooled_avg = block_avg(torch.ones(1, 4, 5, 5))[:, -192:]
        assert torch.allclose(pooled_avg, torch.ones_like(pooled_avg))
        assert float(block_max(spike)[0, -192:, 1:4, 1:4].min()) == pytest.approx(1.0)
        assert float(block_avg(spike)[0, -192, 2, 2]) == pytest.approx(1.0 / 9.0)


# ----------------------------------------------------------------------------- weight files


def test_locate_weights_explains_what_is_missing(tmp_path) -> None:
    with pytest.raises(paper.WeightsNotFoundError) as missing:
        paper.locate_weights(None, [paper.DINO_VITB8_FILENAME], "DINO ViT-B/8", "--dino-weights", tmp_path)
    message = str(missing.value)
    assert paper.DINO_VITB8_FILENAME in message and "--dino-weights" in message and str(tmp_path) in message
    absent = tmp_path / "nowhere.pth"
    with pytest.raises(paper.WeightsNotFoundError, match=r"nowhere\.pth"):
        paper.locate_weights(absent, [paper.DINO_VITB8_FILENAME], "DINO ViT-B/8", "--dino-weights", tmp_path)
    with pytest.raises(paper.WeightsNotFoundError, match="--inception-weights"):
        paper.locate_fid_inception_weights(None, tmp_path)
    fidelity_name = tmp_path / "weights-inception-2015-12-05-6726825d.pth"
    fidelity_name.write_bytes(b"")
    assert paper.locate_fid_inception_weights(None, tmp_path) == fidelity_name
    twin = tmp_path / "pt_inception-2015-12-05-6726825d.safetensors"
    twin.write_bytes(b"")
    assert paper.locate_fid_inception_weights(None, tmp_path) == twin  # pytorch-fid's name comes first
    assert paper.locate_fid_inception_weights(fidelity_name, tmp_path / "elsewhere") == fidelity_name


def test_wrong_files_raise_clear_errors(tmp_path) -> None:
    inception_like = tmp_path / "inception_like.pth"
    torch.save({"Conv2d_1a_3x3.conv.weight": torch.zeros(32, 3, 3, 3)}, inception_like)
    with pytest.raises(CheckpointError) as wrong:
        vit.load_dino_vitb8(inception_like)
    message = str(wrong.value)
    assert str(inception_like) in message and "not a DINO ViT-B/8 checkpoint" in message
    assert "missing keys" in message and "unexpected key Conv2d_1a_3x3.conv.weight" in message

    with pytest.raises(CheckpointError, match="not a FID Inception"):
        inception.load_fid_inception(inception_like)

    # DINO's full training checkpoints pickle an argparse.Namespace: refused, never unpickled.
    pickled_code = tmp_path / "dino_vitbase8_pretrain_full_checkpoint.pth"
    torch.save({"args": argparse.Namespace(arch="vit_base"), "teacher": {}}, pickled_code)
    with pytest.raises(CheckpointError, match="cannot be read as a tensor-only"):
        vit.load_dino_vitb8(pickled_code)

    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"definitely not a checkpoint")
    with pytest.raises(CheckpointError, match=r"garbage\.pth"):
        vit.load_dino_vitb8(garbage)


def test_check_state_dict_reports_shape_mismatch() -> None:
    expected = {"a": (2, 3), "b": (4,), "counter": ()}
    good = {"a": torch.zeros(2, 3), "b": torch.zeros(4)}
    paper.check_state_dict(good, expected, "x.pth", "thing", optional=["counter"])
    bad = {"a": torch.zeros(3, 2), "b": torch.zeros(4), "counter": torch.zeros(())}
    with pytest.raises(CheckpointError, match=r"x.pth is not a thing checkpoint: shape mismatch: a has"):
        paper.check_state_dict(bad, expected, "x.pth", "thing", optional=["counter"])


def test_tiny_vit_round_trips_through_safetensors(tmp_path) -> None:
    from safetensors.torch import save_file

    model = vit.DinoViT(TINY).eval()
    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    loaded = vit.load_dino_vit(path, TINY)
    images = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        expected, got = model(images), loaded(images)
    assert torch.equal(expected.last_block_tokens, got.last_block_tokens)
    assert not any(p.requires_grad for p in loaded.parameters())


# ----------------------------------------------------------------------------- ViT and DINO metrics


def test_attention_is_softmax_attention_over_split_heads() -> None:
    torch.manual_seed(0)
    attention = vit.Attention(dim=16, heads=4)
    tokens = torch.randn(2, 5, 16)
    with torch.no_grad():
        out, keys = attention(tokens)
        q, k, v = attention.qkv(tokens).chunk(3, dim=-1)
        heads = [slice(4 * h, 4 * h + 4) for h in range(4)]
        manual = []
        for head in heads:
            weights = torch.softmax(q[..., head] @ k[..., head].transpose(1, 2) / 2.0, dim=-1)
            manual.append(weights @ v[..., head])
        expected = attention.proj(torch.cat(manual, dim=-1))
    assert torch.allclose(out, expected, atol=1e-5)
    assert keys.shape == (2, 4, 5, 4)
    assert torch.allclose(keys[:, 1], k[..., heads[1]])


def test_position_embedding_resizes_like_dino() -> None:
    model = vit.DinoViT(TINY)
    assert model.position_embedding(32, 32) is model.pos_embed
    with torch.no_grad():
        model.pos_embed[:, 1:] = 0.25
        model.pos_embed[:, 0] = -1.0
    resized = model.position_embedding(48, 72)
    assert resized.shape == (1, 1 + 6 * 9, TINY.dim)
    # Bicubic resampling keeps a constant grid constant; the [CLS] entry is passed through.
    assert torch.allclose(resized[:, 1:], torch.full_like(resized[:, 1:], 0.25), atol=1e-6)
    assert torch.all(resized[:, 0] == -1.0)
    with torch.no_grad():
        out = model(torch.randn(1, 3, 48, 72))
    assert out.last_block_tokens.shape == (1, 1 + 6 * 9, TINY.dim)
    assert out.last_keys.shape == (1, TINY.heads, 1 + 6 * 9, TINY.dim // TINY.heads)


def test_cosine_self_similarity_concatenates_heads() -> None:
    keys = torch.randn(1, 3, 6, 5)
    sim = dino.cosine_self_similarity(keys)
    assert sim.shape == (1, 6, 6)
    assert torch.allclose(sim, sim.transpose(1, 2))
    assert torch.allclose(torch.diagonal(sim, dim1=1, dim2=2), torch.ones(1, 6), atol=1e-6)
    token_a = torch.cat([keys[0, h, 2] for h in range(3)])
    token_b = torch.cat([keys[0, h, 4] for h in range(3)])
    assert sim[0, 2, 4] == pytest.approx(
        float(nn.functional.cosine_similarity(token_a, token_b, dim=0)), abs=1e-6
    )


def test_dino_metrics_with_a_small_vit(photos) -> None:
    torch.manual_seed(1)
    model = vit.DinoViT(TINY).eval()
    face, mirrored, ramp = photos
    sources, references, results = [face, ramp, mirrored], [ramp, face, face], [mirrored, ramp, face]

    scores = dino.dino_scores(model, sources, references, results, batch_size=2)
    for values in (scores.cls, scores.keysim, scores.keysim_mse):
        assert values.shape == (3,) and values.dtype == np.float64
    # Identical pairs: cls of (face, face), keysim of (ramp, ramp).
    assert scores.cls[2] == pytest.approx(1.0, abs=1e-6)
    assert scores.keysim[1] == pytest.approx(1.0, abs=1e-6) and scores.keysim_mse[1] == pytest.approx(
        0.0, abs=1e-10
    )
    assert (
        np.all(scores.cls[:2] < 1.0 - 1e-4) and scores.keysim[0] < 1.0 - 1e-4 and scores.keysim_mse[0] > 0.0
    )
    # (face, mirrored) and (mirrored, face): the measure is symmetric.
    assert scores.keysim[0] == pytest.approx(scores.keysim[2], abs=1e-6)

    # The scores agree with the definitions computed over all images at once (another batch size).
    (src,), (ref,), (res,) = (list(dino.dino_outputs(model, x, 3)) for x in (sources, references, results))
    assert np.allclose(dino.matrix_cosine(ref.cls, res.cls).numpy(), scores.cls, atol=1e-5)
    src_sim, res_sim = dino.cosine_self_similarity(src.last_keys), dino.cosine_self_similarity(res.last_keys)
    assert np.allclose(dino.matrix_cosine(src_sim, res_sim).numpy(), scores.keysim, atol=1e-5)
    assert np.allclose(dino.mean_squared_difference(src_sim, res_sim).numpy(), scores.keysim_mse, atol=1e-9)
    assert src_sim.shape == (3, 785, 785)  # 224 px input: 1 + 28 x 28 tokens
    assert torch.allclose(src_sim, src_sim.transpose(1, 2), atol=1e-6)

    assert dino.dino_scores(model, [], [], []).keysim.shape == (0,)
    with pytest.raises(ValueError, match="pair up"):
        dino.dino_scores(model, [face, ramp], [face, ramp], [face])
    with pytest.raises(ValueError, match="uint8"):
        dino.dino_scores(model, [face], [face.astype(np.float32)], [face])


# ----------------------------------------------------------------------------- end to end, real architectures


def test_dino_vitb8_end_to_end_from_a_release_layout_file(tmp_path, photos) -> None:
    torch.manual_seed(2)
    path = tmp_path / paper.DINO_VITB8_FILENAME
    torch.save(vit.DinoViT().state_dict(), path)
    found = paper.locate_weights(
        None, [paper.DINO_VITB8_FILENAME], "DINO ViT-B/8", "--dino-weights", tmp_path
    )
    model = vit.load_dino_vitb8(found)

    with torch.no_grad():
        small = model(torch.randn(2, 3, 16, 24))  # 2 x 3 patches, position embeddings resized
    assert small.cls.shape == (2, 768) and small.normed_cls.shape == (2, 768)
    assert small.last_keys.shape == (2, 12, 1 + 6, 64)

    face, mirrored, _ = photos
    scores = dino.dino_scores(model, sources=[face], references=[mirrored], results=[face])
    assert scores.keysim[0] == pytest.approx(1.0, abs=1e-6) and scores.keysim_mse[0] == pytest.approx(0.0)
    assert -1.0 <= scores.cls[0] < 1.0 - 1e-4


def _random_fid_inception_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(3)
    model = inception.FidInceptionV3()
    for module in model.modules():
        # He-initialised convolutions and spread BatchNorm statistics keep activations O(1) through
        # 94 layers, so the random features are not all ~0.
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 2.0)
            module.bias.data.uniform_(-0.1, 0.1)
    # Like older exports: no BatchNorm counters.
    return {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}


def test_fid_inception_end_to_end_from_a_pytorch_fid_layout_file(tmp_path, photos) -> None:
    state = _random_fid_inception_state()
    path = tmp_path / paper.FID_INCEPTION_FILENAME
    torch.save(state, path)
    model = inception.load_fid_inception(path)
    face, mirrored, ramp = photos

    # Batches of 2: the face is run in two different batches.
    features = inception.inception_features(model, [face, mirrored, face, ramp], batch_size=2)
    assert features.shape == (4, 2048) and features.dtype == np.float64
    assert np.all(features >= 0.0) and features.std() > 1e-3
    assert np.allclose(features[0], features[2], rtol=1e-4, atol=1e-6)
    assert not np.allclose(features[0], features[1])
    assert fid.fid_from_features(features[[0, 1]], features[[3, 1]]) > 0.0

    torchvision_like = dict(state)
    torchvision_like["fc.weight"] = torch.zeros(1000, 2048)
    torchvision_like["AuxLogits.fc.weight"] = torch.zeros(1000, 768)
    wrong = tmp_path / "inception_v3_google.pth"
    torch.save(torchvision_like, wrong)
    with pytest.raises(CheckpointError) as error:
        inception.load_fid_inception(wrong)
    message = str(error.value)
    assert "inception_v3_google.pth is not a FID Inception" in message
    assert "fc.weight has shape (1000, 2048), expected (1008, 2048)" in message
    assert "unexpected key AuxLogits.fc.weight" in message


class _PooledColours(nn.Module):
    """Stand-in feature network for fid(): 2048 fixed projections of the mean colour, O(1) cost."""

    def __init__(self) -> None:
        super().__init__()
        self.projection = nn.Linear(3, 2048)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return self.projection(batch.mean(dim=(2, 3)))


def test_fid_runs_both_image_sets_through_the_feature_network(photos) -> None:
    torch.manual_seed(4)
    network = _PooledColours().eval()
    face, mirrored, ramp = photos
    features = inception.inception_features(network, [face, mirrored, ramp])
    # inception_features hands the network [-1, 1] images: check against the mean colour directly.
    colours = np.stack([image.reshape(-1, 3).mean(axis=0) for image in (face, mirrored, ramp)])
    with torch.no_grad():
        expected = network.projection(torch.from_numpy(colours / 127.5 - 1.0).float()).double().numpy()
    assert np.allclose(features, expected, atol=2e-2)
    distance = fid.fid(network, [face, mirrored], [face, ramp])
    assert distance == pytest.approx(fid.fid_from_features(features[[0, 1]], features[[0, 2]]), rel=1e-6)
    assert fid.fid(network, [face, mirrored], [mirrored, face]) == pytest.approx(0.0, abs=1e-6)
