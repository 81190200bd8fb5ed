"""Training data: photo preparation with its cache, bad inputs, decompose folders, seeded items, data order
and the validation set."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from shmt_cli.decompose import load_parts, save_parts
from shmt_cli.imageio import write_image_atomic
from shmt_cli.training import dataset as ds
from shmt_cli.training.sample import SAMPLE_KEYS, collate

DEV_PHOTOS = ("00305.jpg", "00356.jpg", "vSYYZ317.png")


# Single-threaded sample building, as in a DataLoader worker (see test_train_augment).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def photo_folder(dev_photo_folders) -> Path:
    """Three dev photos (copies in a temporary folder) and one corrupt file."""
    folder, _ = dev_photo_folders(DEV_PHOTOS, ())
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    write_image_atomic(folder / "noface.png", np.full((200, 200, 3), 128, np.uint8))
    return folder


@pytest.fixture(scope="module")
def prepared(photo_folder: Path, tmp_path_factory: pytest.TempPathFactory):
    run = tmp_path_factory.mktemp("run")
    reported: list[ds.DataFailure] = []
    data = ds.TrainingDataset.from_folders([photo_folder], run, seed=5, report=reported.append)
    return run, data, reported


def test_photos_are_prepared_once_and_a_bad_photo_is_reported_and_skipped(
    prepared, photo_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run, data, reported = prepared
    assert len(data) == 3
    assert sorted(Path(face.name).name for face in data.faces) == sorted(DEV_PHOTOS)
    failures = data.failures()
    assert reported == failures
    reasons = {Path(failure.path).name: failure.reason for failure in failures}
    assert reasons.keys() == {"broken.jpg", "noface.png"}
    assert "corrupt" in reasons["broken.jpg"] and reasons["noface.png"].startswith("no face found")
    assert all("\n" not in f.line() and f.line().startswith(f.path) for f in failures)
    cache = run / ds.CACHE_FOLDER
    assert len(list(cache.glob("*.safetensors"))) == 3 and len(list(cache.glob("*.failed.json"))) == 2
    assert not [p for p in cache.iterdir() if p.name.endswith(".tmp")]  # atomic writes left nothing behind
    for face in data.faces:
        parts = load_parts(face.parts_path)
        assert parts.image.shape == (256, 256, 3) and parts.labels.shape == (256, 256)

    # Second pass (next epoch, resumed run): no decompose work at all, same faces, same failure.
    def no_work(*args, **kwargs):
        raise AssertionError("a cached photo was prepared again")

    monkeypatch.setattr(ds, "load_face", no_work)
    again = ds.TrainingDataset.from_folders([photo_folder], run, seed=5)
    assert again.faces == data.faces and again.failures() == data.failures()


def test_items_are_seeded_by_seed_epoch_and_index(prepared) -> None:
    _, data, _ = prepared
    twin = ds.TrainingDataset(data.faces, seed=5)
    first = data[(1, 2)]
    assert set(SAMPLE_KEYS) <= set(first) and first["index"] == 2 and first["name"] == data.faces[2].name
    same = twin[(1, 2)]
    assert all(torch.equal(first[k], same[k]) for k in SAMPLE_KEYS)
    twin.set_epoch(1)
    assert torch.equal(twin[2]["ref_face"], first["ref_face"])
    assert not torch.equal(data[(2, 2)]["ref_face"], first["ref_face"])  # another epoch, other draws
    other_seed = ds.TrainingDataset(data.faces, seed=6)
    assert not torch.equal(other_seed[(1, 2)]["ref_face"], first["ref_face"])


def test_decompose_folders_are_read_as_parts_and_previews_are_not_photos(prepared, tmp_path: Path) -> None:
    _, data, _ = prepared
    folder = tmp_path / "decomposed"
    folder.mkdir()
    save_parts(folder / "face.safetensors", load_parts(data.faces[0].parts_path))
    write_image_atomic(folder / "face_parsing_color.png", np.zeros((256, 256, 3), np.uint8))
    (folder / "bad.safetensors").write_bytes(b"not safetensors")
    odd = load_parts(data.faces[0].parts_path)
    odd.labels[0, 0] = 40  # not a CelebAMask-HQ id
    save_parts(folder / "odd.safetensors", odd)
    run = tmp_path / "run"
    faces, failures = ds.prepare_faces([folder], run)
    assert [face.parts_path for face in faces] == [folder / "face.safetensors"]
    assert [Path(f.path).name for f in failures] == ["bad.safetensors", "odd.safetensors"]
    assert "labels go up to 40" in failures[1].reason
    assert not (run / ds.CACHE_FOLDER).exists()  # parts files need no cache
    sample = ds.TrainingDataset(faces)[0]
    assert sample["image_GT"].shape == (3, 256, 256)


def test_stream_order_resume_and_ranks() -> None:
    size, seed = 5, 3
    stream = ds.SampleStream(size, seed)
    keys = [key for _, key in zip(range(4 * size), stream, strict=False)]
    for epoch in range(4):
        epoch_keys = keys[epoch * size : (epoch + 1) * size]
        assert {e for e, _ in epoch_keys} == {epoch}
        assert sorted(i for _, i in epoch_keys) == list(range(size))  # each face once per epoch
    assert [i for _, i in keys[:size]] != [i for _, i in keys[size : 2 * size]]  # reshuffled
    # Resuming at a position continues the same stream.
    resumed = ds.SampleStream(size, seed, start=7)
    assert [key for _, key in zip(range(8), resumed, strict=False)] == keys[7:15]
    # Two processes read the global stream interleaved, without overlap.
    rank0 = [
        k for _, k in zip(range(6), ds.SampleStream(size, seed, start=2, rank=0, world_size=2), strict=False)
    ]
    rank1 = [
        k for _, k in zip(range(6), ds.SampleStream(size, seed, start=2, rank=1, world_size=2), strict=False)
    ]
    assert [k for pair in zip(rank0, rank1, strict=True) for k in pair] == keys[2:14]
    assert stream.key(7) == keys[7]


def test_dataloader_batches_and_fixed_validation_set(prepared) -> None:
    _, data, _ = prepared
    loader = DataLoader(data, batch_size=2, sampler=ds.SampleStream(len(data), data.seed), collate_fn=collate)
    batch = next(iter(loader))
    assert batch["image_GT"].shape == (2, 3, 256, 256) and batch["source_seg_onehot"].shape == (
        2,
        19,
        256,
        256,
    )
    assert len(batch["name"]) == 2 and batch["source_seg"].dtype == torch.uint8

    validation = ds.ValidationSet(data.faces, count=2, seed=9)
    assert len(validation) == 2 and len(set(validation.indices)) == 2
    first, again = validation[0], ds.ValidationSet(data.faces, count=2, seed=9)[0]
    assert all(torch.equal(first[k], again[k]) for k in SAMPLE_KEYS)
    data.set_epoch(3)  # training epochs do not move the validation samples
    assert torch.equal(validation[0]["ref_face"], first["ref_face"])
    assert len(ds.ValidationSet(data.faces, count=10, seed=9)) == 3  # capped at the faces available
