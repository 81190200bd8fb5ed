"""Eye, brow, nose and lips refinement (shmt_cli/face/parsing_parts.py): windows, label update, effect."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from shmt_cli.face import parsing_parts
from shmt_cli.face.detect import default_detector
from shmt_cli.face.labels import (
    BACKGROUND,
    HAIR,
    L_EYE,
    L_LIP,
    MOUTH,
    NECK,
    NOSE,
    R_BROW,
    R_EAR,
    R_EYE,
    SKIN,
    U_LIP,
)
from shmt_cli.face.parsing import parse_face
from shmt_cli.face.parsing_shapes import Frame


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


@pytest.fixture(scope="module")
def astronaut_landmarks(astronaut_rgb):
    faces = default_detector().detect(astronaut_rgb)
    assert faces
    return faces[0].landmarks


def test_patch_affine_centres_and_mirrors_the_window(astronaut_landmarks):
    lm = astronaut_landmarks
    frame = Frame(lm)
    for kind, _, points, mirrored in parsing_parts.PARTS:
        affine = parsing_parts.patch_affine(kind, lm[points], frame, mirrored)
        centre = affine @ np.array([(parsing_parts.PATCH_W - 1) / 2, (parsing_parts.PATCH_H - 1) / 2, 1.0])
        # offset_u points away from the face: towards image-left for the unmirrored (image-left) parts.
        outward = frame.u if mirrored else -frame.u
        expected = lm[points].mean(axis=0) + frame.iod * (kind.offset_v * frame.v + kind.offset_u * outward)
        assert np.allclose(centre, expected, atol=1e-6)
        if kind is parsing_parts.EARS:  # the ear's window lies outside the jaw points it is set by
            assert (centre - lm[points].mean(axis=0)) @ outward > 0.1 * frame.iod
        # Patch x runs along the face's u axis, reversed for the mirrored (image-right) parts, so the
        # nose side of every part is on the same side of its patch; the nose's (transposed) patch x
        # runs down the face and its y along u.
        across = affine[:, 1] if kind.transposed else affine[:, 0]
        assert np.sign(across @ frame.u) == (-1 if mirrored else 1)
        if kind.transposed:
            assert affine[:, 0] @ frame.v > 0 and abs(affine[:, 0] @ frame.u) < 1e-9


def test_nose_window_holds_the_nose_and_room_above_it(astronaut_rgb, astronaut_landmarks):
    lm = astronaut_landmarks
    frame = Frame(lm)
    (kind, label, points, mirrored) = next(p for p in parsing_parts.PARTS if p[0] is parsing_parts.NOSE_KIND)
    assert label == NOSE and not mirrored
    affine = parsing_parts.patch_affine(kind, lm[points], frame, mirrored)
    # The rules' nose lies inside the window, with room above its top for a contoured bridge.
    rules = parse_face(astronaut_rgb, lm, parts=False)
    ys, xs = np.nonzero(rules == NOSE)
    inverse = cv2.invertAffineTransform(affine)
    patch_xy = inverse @ np.stack([xs, ys, np.ones_like(xs)]).astype(np.float64)
    assert patch_xy[0].min() > 0.15 * parsing_parts.PATCH_W  # room above the nose's top
    assert patch_xy[0].max() < parsing_parts.PATCH_W - 1 and (patch_xy[1] > 0).all()
    assert (patch_xy[1] < parsing_parts.PATCH_H - 1).all()
    # About the same scale along and across the nose (the transposed window).
    steps = np.linalg.norm(affine[:, :2], axis=0)
    assert 0.8 < steps[0] / steps[1] < 1.25


def test_lips_window_holds_the_lips_with_a_margin(astronaut_rgb, astronaut_landmarks):
    lm = astronaut_landmarks
    frame = Frame(lm)
    (kind, label, points, mirrored) = next(p for p in parsing_parts.PARTS if p[0] is parsing_parts.LIPS_KIND)
    assert label == U_LIP and not mirrored and not kind.transposed
    affine = parsing_parts.patch_affine(kind, lm[points], frame, mirrored)
    rules = parse_face(astronaut_rgb, lm, parts=False)
    ys, xs = np.nonzero(np.isin(rules, (U_LIP, L_LIP)))
    patch_xy = cv2.invertAffineTransform(affine) @ np.stack([xs, ys, np.ones_like(xs)]).astype(np.float64)
    # Inside the window with a margin on every side (dev photos: ~12 px of 64 each side on average).
    for axis, size in ((0, parsing_parts.PATCH_W), (1, parsing_parts.PATCH_H)):
        assert patch_xy[axis].min() > 0.05 * size and patch_xy[axis].max() < 0.95 * size
    steps = np.linalg.norm(affine[:, :2], axis=0)
    assert 0.8 < steps[0] / steps[1] < 1.25


def test_lips_update_swaps_lips_with_skin_and_mouth_rim_only_inside_its_window():
    labels = np.full((80, 90), SKIN, np.uint8)
    labels[20:30, 10:50] = U_LIP
    labels[30:34, 10:50] = MOUTH  # an open mouth between the lips
    labels[34:44, 10:50] = L_LIP
    labels[50:55, 70:75] = U_LIP  # lip outside the window stays
    affine = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])  # window: columns 0..63, rows 0..47
    logits = np.full((parsing_parts.PATCH_H, parsing_parts.PATCH_W), -5.0, np.float32)
    logits[17:29, 10:50] = 5.0  # upper lip grown up by 3 rows, its row next to the mouth rejected
    logits[31:46, 10:50] = 5.0  # lower lip grown down by 2 rows, and over the mouth's lower rows
    logits[20:44, 10:12] = -5.0  # lips' left end rejected (skin beside it)
    out = parsing_parts.apply_logits(labels, [(U_LIP, parsing_parts.LIPS_KIND, affine, logits)])
    assert (out[17:20, 12:50] == U_LIP).all() and (out[44:46, 12:50] == L_LIP).all()
    assert (out[29, 12:50] == MOUTH).all()  # rejected lip at the mouth's rim: inner mouth
    assert (out[20:29, 10] == SKIN).all() and (out[35:44, 10] == SKIN).all()  # rejected beside skin
    assert (out[30:34, 12:50] == MOUTH).all()  # the inner mouth never becomes lip
    assert (out[50:55, 70:75] == U_LIP).all()
    changed = out != labels
    assert set(np.unique(labels[changed])) | set(np.unique(out[changed])) <= {SKIN, MOUTH, U_LIP, L_LIP}
    assert not (changed & (labels == MOUTH)).any()
    assert not changed[:, 64:].any() and not changed[48:].any()


def test_nose_update_swaps_only_skin_and_nose_inside_its_window():
    labels = np.full((80, 90), SKIN, np.uint8)
    labels[10:40, 20:30] = NOSE  # the current nose
    labels[30:40, 5:15] = R_EYE  # an eye inside the window is left alone
    labels[70:75, 80:85] = NOSE  # nose outside the window stays
    # Transposed window: patch x (64) runs down the image, patch y (48) across, 1 px each.
    affine = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    logits = np.full((parsing_parts.PATCH_H, parsing_parts.PATCH_W), -5.0, np.float32)
    logits[0:40, 20:50] = 5.0  # accept image rows 20..49, columns 0..39
    out = parsing_parts.apply_logits(labels, [(NOSE, parsing_parts.NOSE_KIND, affine, logits)])
    assert (out[10:20, 20:30] == SKIN).all()  # rejected nose: skin
    assert (out[20:50, 0:40][labels[20:50, 0:40] == SKIN] == NOSE).all()  # accepted skin: nose
    assert (out[30:40, 5:15] == R_EYE).all()
    assert (out[70:75, 80:85] == NOSE).all()
    changed = out != labels
    assert set(np.unique(labels[changed])) | set(np.unique(out[changed])) <= {SKIN, NOSE}
    assert not changed[:, 48:].any() and not changed[64:].any()


def test_ear_update_takes_background_hair_and_skin_and_rejects_to_background():
    labels = np.full((80, 90), BACKGROUND, np.uint8)
    labels[:, 30:] = SKIN  # the cheek
    labels[0:15, 0:30] = HAIR
    labels[20:40, 20:30] = R_EAR  # the rules' ear, too narrow and partly wrong
    labels[60:64, 0:30] = NECK  # neck inside the window is left alone
    labels[70:75, 80:85] = R_EAR  # ear outside the window stays
    # Transposed window: patch x (64) runs down the image, patch y (48) across, 1 px each.
    affine = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    logits = np.full((parsing_parts.PATCH_H, parsing_parts.PATCH_W), -5.0, np.float32)
    logits[5:35, 10:64] = 5.0  # accept image rows 10..63, columns 5..34
    out = parsing_parts.apply_logits(labels, [(R_EAR, parsing_parts.EARS, affine, logits)])
    assert (out[10:15, 5:30] == R_EAR).all()  # hair accepted
    assert (out[40:60, 5:30] == R_EAR).all()  # background accepted
    assert (out[10:60, 30:35] == R_EAR).all()  # skin at the cheek's edge accepted
    assert (out[20:40, 35:48] == SKIN).all()  # not accepted: the cheek stays skin
    assert (out[60:64, 0:30] == NECK).all()
    assert (out[70:75, 80:85] == R_EAR).all()
    labels[20:40, 0:5] = R_EAR  # a rules' ear pixel the network rejects becomes background
    out = parsing_parts.apply_logits(labels, [(R_EAR, parsing_parts.EARS, affine, logits)])
    assert (out[20:40, 0:5] == BACKGROUND).all()


def test_apply_logits_redecides_the_part_inside_its_window_only():
    labels = np.full((60, 80), SKIN, np.uint8)
    labels[20:30, 10:20] = R_EYE  # the current eye
    labels[20:30, 30:34] = HAIR  # hair inside the new eye: eyes do not take hair
    labels[50:55, 70:75] = R_EYE  # another eye pixel outside the window stays
    # A window of 64 x 48 patch pixels, 1 px each, at the image's top-left corner.
    affine = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    logits = np.full((parsing_parts.PATCH_H, parsing_parts.PATCH_W), -5.0, np.float32)
    logits[18:28, 25:40] = 5.0
    out = parsing_parts.apply_logits(labels, [(R_EYE, parsing_parts.EYES, affine, logits)])
    assert (out[20:30, 10:20] == SKIN).all()  # rejected: back to skin
    assert (out[19:27, 26:30] == R_EYE).all() and (out[19:27, 35:39] == R_EYE).all()
    assert (out[20:30, 30:34] == HAIR).all()
    assert (out[50:55, 70:75] == R_EYE).all()
    # A prior weight keeps the current outline where the network is unsure (logit 0).
    unsure = np.zeros_like(logits)
    kept = parsing_parts.apply_logits(
        labels, [(R_EYE, parsing_parts.EYES, affine, unsure)], {"eyes": (0.0, 1.0)}
    )
    assert np.array_equal(kept, labels)


def test_eye_points_on_painted_liner_are_pulled_back_to_the_eye(astronaut_rgb, astronaut_landmarks):
    # The astronaut is not a dev photo: neither the rules nor the networks saw it. dlib's eye points
    # moved 0.12 interocular distances down onto a black line painted along the shifted lower lids
    # (as on costume makeup): the rules' eyes follow the points off the eye, the refined eyes stay
    # where the unshifted points put them.
    if parsing_parts.default_model() is None:
        pytest.fail("shmt_cli/face/parsing_parts.safetensors is missing")
    lm = astronaut_landmarks
    iod = Frame(lm).iod
    true = parse_face(astronaut_rgb, lm)
    moved = lm.copy()
    moved[36:48, 1] += 0.12 * iod
    painted = astronaut_rgb.copy()
    for part in (slice(36, 42), slice(42, 48)):
        lower_lid = moved[part][[0, 5, 4, 3]]
        cv2.polylines(painted, [np.round(lower_lid).astype(np.int32)], False, (15, 15, 20), 2)
    rules = parse_face(painted, moved, parts=False)
    refined = parse_face(painted, moved)
    for cls in (R_EYE, L_EYE):
        assert _iou(rules == cls, true == cls) < 0.2, cls
        assert _iou(refined == cls, true == cls) > 0.6, cls
    # Brows were not moved: the brows stay about where they were.
    assert _iou(refined == R_BROW, true == R_BROW) > 0.8


def test_nose_decides_the_same_whichever_way_its_window_faces(astronaut_rgb, astronaut_landmarks):
    # The nose's logits are averaged over the window and its mirror image: sampling the window mirrored
    # gives the same logits, mirrored. An eye's (not averaged) differ, so the comparison can fail.
    model = parsing_parts.default_model()
    assert model is not None
    lm = astronaut_landmarks
    frame = Frame(lm)
    rules = parse_face(astronaut_rgb, lm, parts=False)
    assert parsing_parts.NOSE_KIND in parsing_parts.MIRROR_AVERAGED
    assert parsing_parts.EYES not in parsing_parts.MIRROR_AVERAGED
    for kind, label, points, _ in parsing_parts.PARTS:
        logits = []
        for mirrored in (False, True):
            affine = parsing_parts.patch_affine(kind, lm[points], frame, mirrored)
            prior = parsing_parts.sample_patch(
                parsing_parts.part_mask(rules, label).astype(np.uint8), affine, True
            )
            rgb = parsing_parts.sample_patch(astronaut_rgb, affine)
            x = torch.from_numpy(parsing_parts.patch_input(rgb, prior))
            with torch.no_grad():
                logits.append(parsing_parts.kind_logits(model.nets[kind.name], kind, x[None])[0].numpy())
        back = np.flip(logits[1], axis=0 if kind.transposed else 1)
        if kind in parsing_parts.MIRROR_AVERAGED:
            assert np.allclose(logits[0], back, atol=1e-4), kind.name
        elif kind is parsing_parts.EYES:
            assert np.abs(logits[0] - back).max() > 0.5, kind.name


def test_folded_batch_norms_give_the_same_logits():
    # Inference folds each batch norm into its convolution (parsing_net.fold_batch_norms): with
    # non-trivial running statistics the logits must stay those of the network as trained.
    from shmt_cli.face.parsing_net import fold_batch_norms

    torch.manual_seed(0)
    net = parsing_parts.PartNet()
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-1.0, 1.0)
            module.running_var.uniform_(0.2, 3.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.5, 0.5)
    net.eval()
    x = torch.randn(3, parsing_parts.IN_CHANNELS, parsing_parts.PATCH_H, parsing_parts.PATCH_W)
    with torch.no_grad():
        expected = net(x)
        folded = fold_batch_norms(net)
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
        got = folded(x.contiguous(memory_format=torch.channels_last))
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4)
    assert expected.abs().max() > 0.1  # the comparison is not between two near-zero maps
