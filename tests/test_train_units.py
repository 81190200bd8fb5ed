"""Small, fast properties of the training pieces: EMA warm-up, learning rate, draws, config, metrics, plot."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import pytest
import torch
from torch import nn

from shmt_cli.training.config import ConfigMismatch, TrainConfig, settle_config, write_config
from shmt_cli.training.ema import UnetEma
from shmt_cli.training.metrics import MetricsLog, read_metrics
from shmt_cli.training.optim import default_lr
from shmt_cli.training.plot import draw_loss_plot, moving_average, write_loss_plot
from shmt_cli.training.randomness import stream_positions, training_draws, validation_draws


def test_ema_warm_up_follows_the_official_formula() -> None:
    module = nn.Linear(3, 2)
    ema = UnetEma(module)
    start = {n: p.detach().clone() for n, p in module.named_parameters()}
    shadow_expected = {n: t.clone() for n, t in start.items()}
    for n_after in range(1, 6):
        with torch.no_grad():
            for p in module.parameters():
                p.add_(0.5)
        decay = min(0.9999, (1 + n_after) / (10 + n_after))
        assert float(ema.current_decay()) == pytest.approx(decay, rel=1e-7)
        ema.update(module)
        for n, p in module.named_parameters():
            shadow_expected[n] = shadow_expected[n] - (1 - decay) * (shadow_expected[n] - p.detach())
            torch.testing.assert_close(ema.shadows[n], shadow_expected[n], rtol=1e-6, atol=1e-6)
    assert int(ema.num_updates) == 5
    # Late in training the decay is capped at 0.9999.
    ema.num_updates = torch.tensor(10**6, dtype=torch.int32)
    assert float(ema.current_decay()) == pytest.approx(0.9999)


def test_default_learning_rate_is_the_official_scaling() -> None:
    assert default_lr(16) == pytest.approx(1.6e-5)  # the official config: batch 16, 1 GPU
    assert default_lr(2, devices=4, grad_accum=2) == pytest.approx(16e-6)
    with pytest.raises(ValueError):
        default_lr(0)


def test_two_processes_see_the_samples_and_noise_of_one_process() -> None:
    shape = (3, 8, 8)
    one = stream_positions(5, 0, 0, batch=2, processes=1, grad_accum=1)
    two = [stream_positions(5, 0, r, batch=1, processes=2, grad_accum=1)[0] for r in range(2)]
    assert sorted(one) == sorted(two)
    d1 = training_draws(0, one, 5, 0, 1, shape)
    d2 = [training_draws(0, [p], 5, 0, 1, shape) for p in two]
    assert d1.t.tolist() == [d.t.item() for d in d2]
    assert torch.equal(d1.eps, torch.cat([d.eps for d in d2]))
    assert d1.jitter_scale == d2[0].jitter_scale == d2[1].jitter_scale  # one jitter per global batch
    # Every position of a run is used once: steps × micro-batches × ranks tile the stream.
    seen = [
        p
        for step in range(3)
        for micro in range(2)
        for rank in range(3)
        for p in stream_positions(step, micro, rank, batch=2, processes=3, grad_accum=2)
    ]
    assert sorted(seen) == list(range(3 * 2 * 3 * 2))


def test_draws_are_in_range_and_reproducible() -> None:
    draws = [training_draws(7, [p], p, 0, 1, (3, 4, 4)) for p in range(300)]
    ts = torch.cat([d.t for d in draws])
    assert int(ts.min()) >= 0 and int(ts.max()) <= 999 and len(set(ts.tolist())) > 200
    scales = [d.jitter_scale for d in draws]
    assert min(scales) >= 0.2 and max(scales) <= 1.0 and max(scales) - min(scales) > 0.6
    again = training_draws(7, [3], 3, 0, 1, (3, 4, 4))
    assert torch.equal(again.eps, draws[3].eps) and again.t.item() == draws[3].t.item()
    assert torch.equal(validation_draws(1, [0, 1], (3, 4, 4)).eps, validation_draws(1, [0, 1], (3, 4, 4)).eps)


def test_changed_identity_settings_are_refused(tmp_path: Path) -> None:
    base = TrainConfig(data=("/faces",), init="/w", batch=2)
    write_config(base, tmp_path)
    assert settle_config(TrainConfig(data=("/faces",), init="/w", batch=2, max_steps=99), tmp_path)
    with pytest.raises(ConfigMismatch, match="batch"):
        settle_config(TrainConfig(data=("/faces",), init="/w", batch=4), tmp_path)
    assert settle_config(TrainConfig(data=("/faces",), init="/w", batch=4), tmp_path, force=True).batch == 4
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["batch"] == 2 and saved["data"] == ["/faces"]
    with pytest.raises(ValueError, match="dtype"):
        TrainConfig(data=("/faces",), init="/w", dtype="fp16")
    with pytest.raises(ValueError, match="VQ"):
        TrainConfig(data=("/faces",))


def test_metrics_resume_drops_steps_after_the_checkpoint(tmp_path: Path) -> None:
    log = MetricsLog(tmp_path)
    for step in range(1, 6):
        log.append({"step": step, "kind": "train", "loss": 1.0 / step})
    with log.path.open("a") as handle:
        handle.write('{"step": 6, "kind": "tr')  # cut by a kill
    log.truncate_after(3)
    assert [r["step"] for r in read_metrics(log.path)] == [1, 2, 3]
    log.append({"step": 4, "kind": "train", "loss": 0.2})
    assert [r["step"] for r in read_metrics(log.path)] == [1, 2, 3, 4]


def test_loss_plot_draws_the_curves(tmp_path: Path) -> None:
    records = [{"step": s, "kind": "train", "loss": 2.0 / s} for s in range(1, 101)]
    records += [{"step": s, "kind": "val", "loss": 2.2 / s, "loss_ema": 2.1 / s} for s in (25, 50, 75, 100)]
    image = draw_loss_plot(records)
    blank = draw_loss_plot([])
    assert image.shape == blank.shape and (image != blank).mean() > 0.01
    path = write_loss_plot(records, tmp_path / "loss.png")
    assert cv2.imread(str(path)).shape == image.shape
    assert moving_average([1.0, 3.0, 5.0], 2).tolist() == [1.0, 2.0, 4.0]
