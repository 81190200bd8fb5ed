"""`shmt evaluate` flags a result whose face is not the source's (a transfer onto a false detection)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from typer.testing import CliRunner

from shmt_cli.cli import app
from shmt_cli.face.detect import default_detector
from shmt_cli.metrics.wrong_face import wrong_face, wrong_face_reasons

runner = CliRunner()


def test_reasons_on_a_crop(astronaut_rgb: np.ndarray) -> None:
    crop = cv2.resize(astronaut_rgb, (256, 256), interpolation=cv2.INTER_AREA)
    detector = default_detector()
    landmarks = detector.detect(crop)[0].landmarks
    assert wrong_face_reasons(landmarks, detector.detect(crop), (256, 256)) == []
    # The face moved away from where the source's landmarks are.
    shifted = np.roll(crop, (40, 50), axis=(0, 1))
    reasons = wrong_face_reasons(landmarks, detector.detect(shifted), (256, 256))
    assert any("spans from the source's" in r for r in reasons), reasons
    # No face at all (paint inside an iris, blown up to the crop).
    assert wrong_face(landmarks, detector.detect(np.full_like(crop, 128)), (256, 256)) == 1.0
    # Source landmarks lying on their side: never a face the detector could have found upright.
    centre = landmarks.mean(axis=0)
    sideways = (landmarks - centre) @ np.array([[0.0, 1.0], [-1.0, 0.0]]) + centre
    reasons = wrong_face_reasons(sideways, detector.detect(crop), (256, 256))
    assert any(r.startswith("source face: roll") for r in reasons), reasons


def test_evaluate_flags_the_wrong_face(astronaut_rgb: np.ndarray, tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "ref").mkdir()
    photo = np.pad(astronaut_rgb, ((30, 30), (60, 60), (0, 0)), mode="edge")
    Image.fromarray(photo).save(tmp_path / "src" / "a.png")
    Image.fromarray(photo).save(tmp_path / "src" / "b.png")
    made_up = astronaut_rgb.copy()
    made_up[..., 0] = np.clip(made_up[..., 0].astype(int) + 40, 0, 255).astype(np.uint8)
    Image.fromarray(made_up).save(tmp_path / "ref" / "r.png")
    out = tmp_path / "out"
    args = ["transfer", str(tmp_path / "src"), str(tmp_path / "ref"), "-o", str(out), "--engine", "classic"]
    assert runner.invoke(app, args).exit_code == 0
    # b's result stands for a transfer onto something else: its face is not where b's face was.
    result = np.asarray(Image.open(out / "b__r.png"))
    Image.fromarray(np.ascontiguousarray(result[::-1, ::-1])).save(out / "b__r.png")
    report = runner.invoke(app, ["evaluate", str(out), "--json"])
    assert report.exit_code == 0, report.output
    line = next(line for line in report.output.splitlines() if line.startswith("{"))
    folder = json.loads(line)["folders"][0]
    flags = {Path(pair["source"]).name: pair["wrong_face"] for pair in folder["pairs"]}
    assert flags == {"a.png": 0.0, "b.png": 1.0}
    assert folder["summary"]["wrong_face"]["mean"] == 0.5
