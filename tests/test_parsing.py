"""Built-in face parsing (CelebAMask-HQ ids), label remaps and external label-map loading."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from shmt_cli.face import parsing_net, parsing_parts, parsing_skin
from shmt_cli.face.detect import default_detector
from shmt_cli.face.labels import HAIR, L_BROW, L_EYE, L_LIP, MOUTH, NOSE, R_BROW, R_EYE, SKIN, U_LIP
from shmt_cli.face.parsing import load_label_map, parse_face, parse_rules, remap_labels
from shmt_cli.face.parsing_shapes import Frame
from shmt_cli.face.template import TEMPLATE_256

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import parsing_iou
from parsing_face_paint import paint_cheek
from parsing_light import side_light

# The rule-based parser (method "rules" without the part networks) on 8 dev photos: a regression
# guard a little below what it reaches there (tools/parsing_iou.py --method=rules --no-parts; at the time
# of writing: M_face 0.93, lips 0.89, eyes 0.80, brows 0.78, nose 0.85, inner mouth 0.59 over the 4 with
# an open mouth).
# Its ~67 constants were fitted on all 36 dev photos: this is not a held-out figure.
DEV_SUBSET = [
    "makeup/00012.jpg",
    "makeup/10050.jpg",
    "makeup/10092.jpg",
    "makeup/vFG25.png",
    "makeup/vRX497.png",
    "non_makeup/00305.jpg",
    "non_makeup/00462.jpg",
    "non_makeup/xfsy_0069.png",
]
MIN_MEAN_IOU = {"M_face": 0.91, "lips": 0.86, "eyes": 0.78, "brows": 0.75, "nose": 0.82, "mouth": 0.50}

# Held-out check of the learned refinement: tests/data/parsing_net_fold0.safetensors is the network of
# fold 0 of `tools/parsing_train.py --kfold 3` (same settings as the shipped weights, with the part
# groups left to the prior as chosen on the other folds' photos), trained on the other 24 dev photos;
# these are the 12 photos it did not see (7 made-up, 5 bare).
FOLD0_WEIGHTS = Path(__file__).resolve().parent / "data" / "parsing_net_fold0.safetensors"
FOLD0_HELD_OUT = {
    "makeup": ["00012.jpg", "10028.jpg", "10063.jpg", "21013.jpg", "YH-08.png", "vFG293.png", "vHX763.png"],
    "non_makeup": ["00288.jpg", "00364.jpg", "00462.jpg", "00556.jpg", "vSYYZ317.png"],
}
# Floors a little below what fold 0 reached on them (makeup: M_face 0.914, lips 0.885, eyes 0.800,
# brows 0.731, nose 0.828; bare: 0.917, 0.891, 0.837, 0.784, 0.878). The rules' prior under it was
# fitted on all 36 dev photos: only the network is held out here.
FOLD0_FLOORS = {
    "makeup": {"M_face": 0.90, "lips": 0.87, "eyes": 0.78, "brows": 0.71, "nose": 0.81},
    "non_makeup": {"M_face": 0.90, "lips": 0.87, "eyes": 0.82, "brows": 0.76, "nose": 0.86},
}


@pytest.fixture(scope="module")
def astronaut_parse(astronaut_rgb):
    faces = default_detector().detect(astronaut_rgb)
    assert faces, "dlib finds the astronaut's face"
    landmarks = faces[0].landmarks
    return parse_face(astronaut_rgb, landmarks), landmarks


def _centroid(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return np.array([xs.mean(), ys.mean()])


def test_astronaut_label_map_shape_and_classes(astronaut_rgb, astronaut_parse):
    labels, _ = astronaut_parse
    assert labels.shape == astronaut_rgb.shape[:2]
    assert labels.dtype == np.uint8
    assert labels.max() < 19
    for cls in (SKIN, NOSE, L_EYE, R_EYE, L_BROW, R_BROW, U_LIP, L_LIP):
        assert (labels == cls).sum() > 20, f"class {cls} missing"


def test_astronaut_geometry_is_plausible(astronaut_parse):
    labels, _ = astronaut_parse
    nose = _centroid(labels == NOSE)
    upper, lower = _centroid(labels == U_LIP), _centroid(labels == L_LIP)
    assert upper[1] > nose[1] and lower[1] > upper[1]
    # l_ (subject's left) is on the IMAGE's right.
    assert _centroid(labels == L_EYE)[0] > _centroid(labels == R_EYE)[0]
    assert _centroid(labels == L_BROW)[0] > _centroid(labels == R_BROW)[0]
    brows_y = min(_centroid(labels == L_BROW)[1], _centroid(labels == R_BROW)[1])
    assert brows_y < _centroid(labels == L_EYE)[1]


def test_astronaut_eyes_inside_eye_landmark_hulls(astronaut_parse):
    labels, landmarks = astronaut_parse
    for cls, points in ((R_EYE, landmarks[36:42]), (L_EYE, landmarks[42:48])):
        hull = np.zeros(labels.shape, np.uint8)
        cv2.fillConvexPoly(hull, cv2.convexHull(np.round(points).astype(np.int32)), 1)
        hull = cv2.dilate(hull, np.ones((5, 5), np.uint8)).astype(bool)
        eye = labels == cls
        assert (eye & hull).sum() / eye.sum() > 0.95


@pytest.mark.parametrize("method", ["rules", "net"])
def test_astronaut_skin_covers_forehead_and_hair_is_separate(astronaut_rgb, astronaut_parse, method):
    landmarks = astronaut_parse[1]
    labels = parse_face(astronaut_rgb, landmarks, method=method)
    iod = np.linalg.norm(landmarks[36:42].mean(0) - landmarks[42:48].mean(0))
    brows_mid = (landmarks[21] + landmarks[22]) / 2
    # The astronaut's bangs start about a quarter of an interocular distance above the brows: the
    # strip of forehead between is skin, and the bangs above are hair, not skin.
    r = max(2, round(0.08 * iod))
    x, y = np.round(brows_mid - np.array([0.0, 0.12 * iod])).astype(int)
    assert (labels[y - r : y + r + 1, x - r : x + r + 1] == SKIN).mean() > 0.9
    x, y = np.round(brows_mid - np.array([0.0, 0.6 * iod])).astype(int)
    assert (labels[y - r : y + r + 1, x - r : x + r + 1] == HAIR).mean() > 0.8
    # Skin reaches above the brows over their whole width, not only between them.
    for point in (landmarks[19], landmarks[24]):
        assert labels[round(point[1] - 0.12 * iod), round(point[0])] == SKIN


def test_dev_photos_reach_iou_floor(faces_dir):
    pairs = []
    for name in DEV_SUBSET:
        kind, file_name = name.split("/")
        image = faces_dir / kind / "images" / file_name
        seg = faces_dir / kind / "seg" / (image.stem + ".png")
        assert image.is_file() and seg.is_file(), name
        pairs.append((image, seg))
    scores, _ = parsing_iou.evaluate(
        pairs, verbose=False, parse=lambda rgb, lm: parse_face(rgb, lm, "rules", parts=False)
    )
    means = {name: float(np.mean(values)) for name, values in scores.items() if values}
    for name, floor in MIN_MEAN_IOU.items():
        assert means[name] >= floor, f"{name}: mean IoU {means[name]:.3f} < {floor}"


def _fold0_held_out_pairs(faces_dir: Path, kind: str) -> list[tuple[Path, Path]]:
    """(photo, official map) of the dev photos of one kind that fold 0 did not see."""
    return [
        (faces_dir / kind / "images" / name, faces_dir / kind / "seg" / (Path(name).stem + ".png"))
        for name in FOLD0_HELD_OUT[kind]
    ]


@pytest.mark.parametrize("kind", ["makeup", "non_makeup"])
def test_refinement_reaches_iou_floor_on_held_out_photos(faces_dir, kind):
    net = parsing_net.load_net(FOLD0_WEIGHTS)
    pairs = _fold0_held_out_pairs(faces_dir, kind)
    scores, _ = parsing_iou.evaluate(
        pairs, verbose=False, parse=lambda rgb, lm: parsing_net.refine_parse(rgb, lm, net)
    )
    assert len(scores["M_face"]) == len(pairs)
    means = {name: float(np.mean(values)) for name, values in scores.items() if values}
    for name, floor in FOLD0_FLOORS[kind].items():
        assert means[name] >= floor, f"{kind} {name}: held-out mean IoU {means[name]:.3f} < {floor}"


# Held-out check of the eye, brow, nose, lips and ear networks: tests/data/parsing_parts_fold0.safetensors
# holds the networks of fold 0 of `tools/parsing_parts_train.py --kfold 3 --fold-dir` (same settings as
# the shipped weights; kinds, biases and prior weights chosen on the other folds' photos), trained on the
# other 24 dev photos; FOLD0_HELD_OUT are the 12 it did not see. Floors a little below what it reached
# there on top of the rules (made-up eyes 0.835, brows 0.754, nose 0.846, lips 0.908; bare 0.864,
# 0.823, 0.889, 0.902) and above the rules alone there (made-up 0.800, 0.725, 0.819, 0.885; bare 0.837,
# 0.702, 0.876, 0.891). The brow network of issue 14's brows pass (taller window, costume, glitter and
# bangs augmentation) moved fold 0's brows from 0.765 / 0.786 to 0.754 / 0.823: fold 0 holds none of
# the glittered or costume brows it gains on (10050, 21018), over all three folds made-up 0.749 -> 0.779.
# Its settings are chosen on the other folds' 256 px align crops (eyes, nose and lips moved from 0.838,
# 0.840, 0.905; bare 0.859, 0.892, 0.903 with the settings chosen at the photos' own size), and its lips
# network was trained on the crops too (lips on these photos' crops 0.898 / 0.893 -> 0.903 / 0.895).
# With the nose's logits averaged over its window and the mirror image, nose 0.846 / 0.889 -> 0.849 / 0.892.
# The ear network (ears bias -1, prior weight 1, chosen on the other folds' crops) raises M_face 0.908 /
# 0.914 -> 0.913 / 0.918 and the ears (over the photos that have them) 0.159 / 0.040 -> 0.332 / 0.225.
PARTS_FOLD0_WEIGHTS = Path(__file__).resolve().parent / "data" / "parsing_parts_fold0.safetensors"
PARTS_FOLD0_FLOORS = {
    "makeup": {"M_face": 0.91, "eyes": 0.82, "brows": 0.75, "nose": 0.83, "lips": 0.895, "ears": 0.30},
    "non_makeup": {"M_face": 0.915, "eyes": 0.845, "brows": 0.80, "nose": 0.885, "lips": 0.895, "ears": 0.20},
}


@pytest.mark.parametrize("kind", ["makeup", "non_makeup"])
def test_part_networks_reach_iou_floor_on_held_out_photos(faces_dir, kind):
    model = parsing_parts.load_model(PARTS_FOLD0_WEIGHTS)
    pairs = _fold0_held_out_pairs(faces_dir, kind)

    def parse(rgb, lm):
        labels = parse_face(rgb, lm, parts=False)
        return parsing_parts.refine_parts(rgb, lm, labels, "rules", model)

    scores, _ = parsing_iou.evaluate(pairs, verbose=False, parse=parse)
    means = {name: float(np.mean(values)) for name, values in scores.items() if values}
    for name, floor in PARTS_FOLD0_FLOORS[kind].items():
        assert means[name] >= floor, f"{kind} {name}: held-out mean IoU {means[name]:.3f} < {floor}"


# Held-out check of the skin region's fitted constants: tests/data/parsing_skin_folds.json holds the
# constants that `tools/parsing_rules_kfold.py --aligned 256 --fold-params` found per fold of the
# standard 3-fold split on the other folds' 256 px align crops, with each fold's held-out photos. With
# fold 0's constants, M_face of its held-out photos' crops (which did not fit them) must stay above
# these floors, a little below what it reached (made-up 0.904 over 7 photos, 10028's blonde hair 0.77;
# bare 0.910 over 5, vSYYZ317's bangs and shadowed neck 0.75).
SKIN_FOLDS = Path(__file__).resolve().parent / "data" / "parsing_skin_folds.json"
SKIN_FOLD0_FLOORS = {"makeup": 0.89, "non_makeup": 0.90}


@pytest.mark.parametrize("kind", ["makeup", "non_makeup"])
def test_skin_region_reaches_m_face_floor_on_held_out_crops(faces_dir, kind, monkeypatch):
    fold = json.loads(SKIN_FOLDS.read_text())["folds"][0]
    for name, value in fold["values"].items():
        assert hasattr(parsing_skin, name), name
        monkeypatch.setattr(parsing_skin, name, value)
    names = [n for n in fold["held_out"] if n.startswith(kind + "/")]
    assert len(names) >= 4
    face_ids = parsing_iou.REGIONS["M_face"]
    scores = []
    for name in names:
        crop, ref_crop, landmarks = parsing_iou.aligned_view(*_dev_input(faces_dir, name), 256)
        pred = np.isin(parse_face(crop, landmarks, parts=False), face_ids)
        scores.append(parsing_iou.iou(pred, np.isin(ref_crop, face_ids)))
    mean = float(np.mean(scores))
    assert mean >= SKIN_FOLD0_FLOORS[kind], f"{kind}: held-out M_face {mean:.3f} < {SKIN_FOLD0_FLOORS[kind]}"


def test_ear_windows_hold_the_official_ears(faces_dir):
    # On the 256 px align crops of the dev photos with both ears showing, every official ear pixel
    # lies inside its side's window (the window is set from where those ears are: parsing_parts.EARS).
    for name in ("makeup/00012.jpg", "non_makeup/00510.jpg", "non_makeup/00556.jpg"):
        _, ref, lm = parsing_iou.aligned_view(*_dev_input(faces_dir, name), 256)
        frame = Frame(lm)
        for kind, label, points, mirrored in parsing_parts.PARTS:
            if kind is not parsing_parts.EARS:
                continue
            affine = parsing_parts.patch_affine(kind, lm[points], frame, mirrored)
            inverse = cv2.invertAffineTransform(affine)
            ys, xs = np.nonzero(ref == label)
            assert xs.size > 100, (name, label)
            px, py = inverse @ np.stack([xs, ys, np.ones_like(xs)]).astype(np.float64)
            inside = (px > -0.5) & (px < parsing_parts.PATCH_W - 0.5) & (py > -0.5)
            inside &= py < parsing_parts.PATCH_H - 0.5
            assert inside.mean() > 0.99, (name, label, inside.mean())


def _dev_input(faces_dir, name: str):
    """(RGB photo, official labels at its size, dlib landmarks) of one dev photo "<kind>/<file>"."""
    kind, file_name = name.split("/")
    image = faces_dir / kind / "images" / file_name
    rgb = cv2.cvtColor(cv2.imread(str(image), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    faces = default_detector().detect(rgb)
    assert faces, name
    ref = load_label_map(faces_dir / kind / "seg" / (image.stem + ".png"), rgb.shape[:2])
    return rgb, ref, faces[0].landmarks


def _dev_photo(faces_dir, name: str):
    """(rule-parsed labels, reference labels, landmarks) of one dev photo, parsed at its own size by the
    rules alone (the part networks were trained on the dev photos)."""
    rgb, ref, landmarks = _dev_input(faces_dir, name)
    return parse_face(rgb, landmarks, method="rules", parts=False), ref, landmarks


def _interocular(landmarks: np.ndarray) -> float:
    return float(np.linalg.norm(landmarks[36:42].mean(0) - landmarks[42:48].mean(0)))


def test_heavy_liner_is_trimmed_off_the_eyes(faces_dir):
    # Thick black liner around both eyes: dlib's eye outline takes it in (eye IoU 0.59 and 0.68 before
    # the eyeball hull); the sclera and iris evidence cuts most of it away.
    for name, floor in (("makeup/10037.jpg", 0.65), ("makeup/10028.jpg", 0.70)):
        pred, ref, _ = _dev_photo(faces_dir, name)
        eye_pred, eye_ref = np.isin(pred, (L_EYE, R_EYE)), np.isin(ref, (L_EYE, R_EYE))
        assert parsing_iou.iou(eye_pred, eye_ref) >= floor, name
        assert eye_pred.sum() < 1.45 * eye_ref.sum(), name


def test_inner_mouth_open_and_closed(faces_dir):
    # Closed mouths whose dlib inner-lip points still stand 0.1-0.2 iod apart: (almost) no mouth label.
    for name in ("makeup/00012.jpg", "makeup/10028.jpg"):
        pred, ref, landmarks = _dev_photo(faces_dir, name)
        assert not (ref == MOUTH).any()
        assert (pred == MOUTH).sum() < 0.005 * _interocular(landmarks) ** 2, name
    # Teeth showing between inner-lip points that dlib closed (IoU 0.05 before the teeth test), and
    # a wide-open mouth that the colour test alone covered only half of (IoU 0.48).
    for name, floor in (("non_makeup/00305.jpg", 0.5), ("makeup/10092.jpg", 0.8)):
        pred, ref, _ = _dev_photo(faces_dir, name)
        assert parsing_iou.iou(pred == MOUTH, ref == MOUTH) >= floor, name


@pytest.mark.parametrize(
    ("name", "side", "colour"),
    [("non_makeup/00434.jpg", 0, (40, 90, 200)), ("makeup/00012.jpg", 1, (200, 30, 40))],
)
def test_face_paint_on_a_cheek_stays_face(faces_dir, name, side, colour):
    # A block of face paint over one cheek (80 % opaque) fails the skin colour test and GrabCut's colour
    # models: the face region stopped short of it (M_face -0.06 on these photos before, 0.88-0.89).
    rgb, ref, landmarks = _dev_input(faces_dir, name)
    pred = parse_face(rgb, landmarks, method="rules", parts=False)
    painted = paint_cheek(rgb, landmarks, side, colour)
    face_ids = parsing_iou.REGIONS["M_face"]
    before = parsing_iou.iou(np.isin(pred, face_ids), np.isin(ref, face_ids))
    after = parse_face(painted, landmarks, method="rules")
    assert parsing_iou.iou(np.isin(after, face_ids), np.isin(ref, face_ids)) >= before - 0.025


@pytest.mark.parametrize("name", ["makeup/vRX914.png", "non_makeup/vSYYZ317.png", "non_makeup/00510.jpg"])
def test_light_from_one_side_keeps_the_face(faces_dir, name):
    # Half the face in shadow (brightness falling to 45 % from the nose outwards, either side), on the
    # 256 px align crop that the pipeline parses: one skin Gaussian over both halves was so wide that
    # background passed for skin (M_face vRX914 0.96 -> 0.72, vSYYZ317 0.75 -> 0.58, 00510 0.95 ->
    # 0.91); one Gaussian per half of the face keeps it.
    crop, ref, landmarks = parsing_iou.aligned_view(*_dev_input(faces_dir, name), 256)
    face_ids = parsing_iou.REGIONS["M_face"]
    truth = np.isin(ref, face_ids)
    plain = parsing_iou.iou(np.isin(parse_face(crop, landmarks, parts=False), face_ids), truth)
    for direction in (-1.0, 1.0):
        labels = parse_face(side_light(crop, landmarks, direction), landmarks, parts=False)
        assert parsing_iou.iou(np.isin(labels, face_ids), truth) >= plain - 0.03, direction


def test_face_boundary_is_redecided_at_full_resolution():
    # A skin-coloured disc on a dark, noisy background; the working scale's region is the disc grown
    # by 3 px and shifted by 2 px: the refinement moves the edge back onto the disc's own edge.
    rng = np.random.default_rng(0)
    rgb = np.clip(rng.normal(60, 12, (160, 160, 3)), 0, 255).astype(np.uint8)
    disc = np.zeros((160, 160), np.uint8)
    cv2.circle(disc, (80, 80), 45, 1, -1)
    rgb[disc.astype(bool)] = np.clip(rng.normal((205, 160, 140), 6, (int(disc.sum()), 3)), 0, 255)
    rough = np.zeros_like(disc)
    cv2.circle(rough, (82, 80), 48, 1, -1)
    frame = Frame(TEMPLATE_256)  # only its interocular distance (about 77 px) matters here
    # Colour mixtures for face and surroundings, as the working scale's GrabCut leaves them.
    seeds = np.where(rough.astype(bool), cv2.GC_PR_FGD, cv2.GC_PR_BGD).astype(np.uint8)
    models = (np.zeros((1, 65)), np.zeros((1, 65)))
    cv2.setRNGSeed(0)
    cv2.grabCut(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), seeds, None, *models, 1, cv2.GC_INIT_WITH_MASK)
    refined = parsing_skin._refine_boundary(rgb, rough.astype(bool), frame, models)
    truth = disc.astype(bool)
    assert parsing_iou.iou(rough.astype(bool), truth) < 0.9
    assert parsing_iou.iou(refined, truth) > 0.97


def test_parse_face_degenerate_inputs(astronaut_parse):
    _, landmarks = astronaut_parse
    # A featureless image still gets landmark-drawn parts, and nothing breaks.
    flat = np.full((128, 128, 3), 128, np.uint8)
    labels = parse_face(flat, landmarks * 128 / 512)
    assert labels.shape == (128, 128) and (labels == U_LIP).any()
    # A face entirely outside the image leaves it background.
    assert not parse_face(flat, landmarks + 1000).any()
    with pytest.raises(ValueError, match="uint8"):
        parse_face(flat.astype(np.float32), landmarks)
    with pytest.raises(ValueError, match="68, 2"):
        parse_face(flat, landmarks[:5])


@pytest.mark.parametrize("method", ["rules", "net"])
def test_face_cut_by_the_frame_still_parses(astronaut_rgb, astronaut_parse, method):
    # A photo that ends at the eyes, or just beside the outer corner of one eye: the parts inside are
    # labelled, those outside have empty windows (this raised in cvtColor before).
    _, landmarks = astronaut_parse
    cut = int(landmarks[37, 1])
    top = parse_face(np.ascontiguousarray(astronaut_rgb[:cut]), landmarks, method=method)
    assert top.shape == (cut, astronaut_rgb.shape[1])
    assert (top == L_BROW).any() and (top == R_BROW).any() and not (top == U_LIP).any()
    cut = int(landmarks[45, 0])
    side = parse_face(np.ascontiguousarray(astronaut_rgb[:, cut:]), landmarks - [cut, 0], method=method)
    assert side.shape == (astronaut_rgb.shape[0], astronaut_rgb.shape[1] - cut)
    assert not (side == U_LIP).any()


def test_parse_face_only_looks_near_the_face(astronaut_rgb, astronaut_parse):
    labels, landmarks = astronaut_parse
    # The same photo on a large canvas: same labels around the face, background far away.
    canvas = np.zeros((1600, 1400, 3), np.uint8)
    canvas[300:812, 200:712] = astronaut_rgb
    big = parse_face(canvas, landmarks + np.array([200, 300]))
    assert not big[:250].any() and not big[:, 800:].any()
    left, top = np.floor(landmarks.min(0)).astype(int)
    right, bottom = np.ceil(landmarks.max(0)).astype(int)
    inside = big[300 + top : 300 + bottom, 200 + left : 200 + right]
    assert (inside == labels[top:bottom, left:right]).mean() > 0.97


# ---- learned refinement


def test_net_parse_is_deterministic_and_differs_from_its_prior(astronaut_rgb, astronaut_parse):
    _, landmarks = astronaut_parse
    labels = parse_face(astronaut_rgb, landmarks, method="net")
    again = parse_face(astronaut_rgb.copy(), landmarks.copy(), method="net")
    assert labels.shape == astronaut_rgb.shape[:2] and labels.dtype == np.uint8
    assert np.array_equal(labels, again)
    for cls in (SKIN, NOSE, L_EYE, R_EYE, L_BROW, R_BROW, U_LIP, L_LIP, HAIR):
        assert (labels == cls).sum() > 20, f"class {cls} missing"
    # The network changes its prior, the fast rules' parse, but only near the face: far from it
    # (outside the network's crop) the prior's labels are kept as they are.
    prior = parse_rules(astronaut_rgb, landmarks, fast=True)
    changed = labels != prior
    assert changed.sum() > 100
    ys, xs = np.nonzero(changed)
    affine = parsing_net.crop_affine(landmarks)
    in_crop = np.stack([xs, ys], axis=1) @ affine[:, :2].T + affine[:, 2]
    assert (np.abs(in_crop - (parsing_net.CROP_SIZE - 1) / 2) <= parsing_net.CROP_SIZE / 2 + 1).all()


@pytest.mark.parametrize("method", ["rules", "net"])
def test_parse_is_the_same_bytes_on_any_thread_count(astronaut_rgb, astronaut_parse, method):
    # GrabCut's k-means, OpenCV's parallel filters and the network's convolutions must not depend on
    # how many threads run them: a face parses to the same bytes in every process.
    _, landmarks = astronaut_parse
    cv_threads, torch_threads = cv2.getNumThreads(), torch.get_num_threads()
    try:
        out = []
        for threads in (1, 2):
            cv2.setNumThreads(threads)
            torch.set_num_threads(threads)
            out.append(parse_face(astronaut_rgb, landmarks, method=method))
    finally:
        cv2.setNumThreads(cv_threads)
        torch.set_num_threads(torch_threads)
    assert np.array_equal(out[0], out[1])


def test_default_method_is_rules_and_unknown_method_refused(astronaut_rgb, astronaut_parse):
    labels, landmarks = astronaut_parse
    assert np.array_equal(labels, parse_face(astronaut_rgb, landmarks, method="rules"))
    with pytest.raises(ValueError, match="unknown parse method"):
        parse_face(astronaut_rgb, landmarks, method="bisenet")


def test_crop_affine_puts_the_eyes_at_their_canonical_pixels(astronaut_parse):
    _, landmarks = astronaut_parse
    affine = parsing_net.crop_affine(landmarks)
    eyes = np.stack([landmarks[36:42].mean(0), landmarks[42:48].mean(0)])
    in_crop = eyes @ affine[:, :2].T + affine[:, 2]
    ppu = parsing_net.CROP_SIZE / (parsing_net.CROP_U[1] - parsing_net.CROP_U[0])
    expected_y = -parsing_net.CROP_V[0] * ppu - 0.5
    expected_x = np.array([-0.5 - parsing_net.CROP_U[0], 0.5 - parsing_net.CROP_U[0]]) * ppu - 0.5
    assert np.allclose(in_crop[:, 1], expected_y, atol=1e-6)
    assert np.allclose(in_crop[:, 0], expected_x, atol=1e-6)


def test_logits_back_to_the_photo_follow_the_crop(astronaut_rgb, astronaut_parse):
    _, landmarks = astronaut_parse
    affine, _, prior, _ = parsing_net.prepare_crop(astronaut_rgb, landmarks)
    # One-hot logits of the prior, resampled to the photo and back into the crop, give the prior again
    # wherever the crop lies inside the photo (up to pixels on label edges).
    logits = torch.from_numpy(np.eye(19, dtype=np.float32)[prior].transpose(2, 0, 1) * 10)
    photo_labels = parsing_net.logits_to_labels(logits, affine, astronaut_rgb.shape[:2])
    inside = parsing_net.warp_to_crop(np.ones(astronaut_rgb.shape[:2], np.uint8), affine, nearest=True) > 0
    back = parsing_net.warp_to_crop(photo_labels, affine, nearest=True)
    assert inside.mean() > 0.5
    assert (back[inside] == prior[inside]).mean() > 0.97
    # Far from the face the photo stays background.
    assert not photo_labels[:20].any() or (photo_labels[:20] == 0).mean() > 0.9
    # A zero residual over the prior's own logits gives the prior back at the photo's resolution, and
    # equal logits everywhere give the first class (background), as an arg-max does.
    full_prior = parse_rules(astronaut_rgb, landmarks, fast=True)
    zeros = torch.zeros((19, *prior.shape))
    table = np.eye(19, dtype=np.float32) * 5
    assert np.array_equal(
        parsing_net.logits_to_labels(zeros, affine, astronaut_rgb.shape[:2], full_prior, table), full_prior
    )
    flat = parsing_net.logits_to_labels(zeros, affine, astronaut_rgb.shape[:2])
    assert not flat.any()


def test_mirrored_input_is_the_input_of_the_mirrored_crop(astronaut_rgb, astronaut_parse):
    _, landmarks = astronaut_parse
    _, crop, prior, _ = parsing_net.prepare_crop(astronaut_rgb, landmarks)
    x = parsing_net.network_input(crop, prior)
    table = parsing_net.flip_table()
    again = parsing_net.network_input(np.ascontiguousarray(crop[:, ::-1]), table[prior[:, ::-1]])
    assert np.array_equal(parsing_net.mirrored_input(x), again)


def test_flip_table_swaps_left_and_right_only():
    table = parsing_net.flip_table()
    assert [table[i] for i in (L_EYE, R_EYE, L_BROW, R_BROW)] == [R_EYE, L_EYE, R_BROW, L_BROW]
    assert np.array_equal(table[table], np.arange(19))
    assert table[SKIN] == SKIN and table[U_LIP] == U_LIP


def test_shipped_weights_load_and_bad_weights_are_named(tmp_path):
    net = parsing_net.load_net()
    assert not net.training
    assert parsing_net.WEIGHTS_PATH.stat().st_size < 5_000_000
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match=r"junk\.safetensors"):
        parsing_net.load_net(junk)
    # The part groups left to the prior come from the file's metadata; unknown names are refused.
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    eyes = tmp_path / "eyes.safetensors"
    save_file(state, str(eyes), metadata={"prior_parts": "eyes"})
    assert parsing_net.load_net(eyes).prior_classes() == (L_EYE, R_EYE)
    odd = tmp_path / "odd.safetensors"
    save_file(state, str(odd), metadata={"prior_parts": "eyes,ears"})
    with pytest.raises(ValueError, match=r"odd\.safetensors.*ears"):
        parsing_net.load_net(odd)


def test_prior_parts_keep_the_priors_labels_there_only(astronaut_rgb, astronaut_parse):
    _, landmarks = astronaut_parse
    affine, _, crop_prior, prior = parsing_net.prepare_crop(astronaut_rgb, landmarks)
    # A residual that votes "eye" everywhere: with the eyes left to the prior, eye labels are exactly
    # the prior's (and the residual's next choice, skin, takes the rest); without, eyes spread.
    logits = torch.zeros((19, *crop_prior.shape))
    logits[L_EYE] = 50.0
    logits[SKIN] = 40.0
    table = np.eye(19, dtype=np.float32)
    shape = astronaut_rgb.shape[:2]
    kept = parsing_net.logits_to_labels(logits, affine, shape, prior, table, (L_EYE, R_EYE))
    assert np.array_equal(np.isin(kept, (L_EYE, R_EYE)), np.isin(prior, (L_EYE, R_EYE)))
    assert np.array_equal(kept == L_EYE, prior == L_EYE)
    assert (kept == SKIN).sum() > (prior == SKIN).sum()
    spread = parsing_net.logits_to_labels(logits, affine, shape, prior, table)
    assert (spread == L_EYE).sum() > 10 * (prior == L_EYE).sum()


# ---- label orders


def test_remap_identity_and_bisenet():
    labels = np.arange(19, dtype=np.uint8).reshape(1, 19)
    assert np.array_equal(remap_labels(labels, "celebamask"), labels)
    bisenet = remap_labels(labels, "bisenet")[0]
    # Spec §7: zll 2 (l_brow) -> 6, 6 (eye_g) -> 3, 10 (nose) -> 2, 14 (neck) -> 17, 17 (hair) -> 13.
    assert [bisenet[i] for i in (0, 2, 6, 10, 14, 17)] == [0, 6, 3, 2, 17, 13]
    assert sorted(bisenet.tolist()) == list(range(19))


def test_remap_mt_order():
    mt = remap_labels(np.arange(14, dtype=np.uint8), "mt")
    # MT: 1 skin, 6 nose, 7 upper lip, 8 teeth, 9 lower lip, 10 hair, 13 neck.
    assert [mt[i] for i in (0, 1, 6, 7, 8, 9, 10, 13)] == [0, SKIN, NOSE, U_LIP, 10, L_LIP, 13, 17]


def test_remap_rejects_bad_values_and_orders():
    with pytest.raises(ValueError, match=r"0\.\.13"):
        remap_labels(np.array([[14]], np.uint8), "mt")
    with pytest.raises(ValueError, match="unknown label order"):
        remap_labels(np.zeros((2, 2), np.uint8), "lapa")


# ---- loading


def test_load_label_map_resizes_with_nearest(tmp_path):
    labels = np.zeros((8, 8), np.uint8)
    labels[:4] = 13
    labels[4:, 4:] = 1
    path = tmp_path / "seg.png"
    cv2.imwrite(str(path), labels)
    out = load_label_map(path, (16, 16))
    assert out.shape == (16, 16) and out.dtype == np.uint8
    assert set(np.unique(out).tolist()) == {0, 1, 13}
    assert (out[:8] == 13).all() and (out[8:, 8:] == 1).all()
    # An int size means a square map; 3 identical channels are accepted.
    path3 = tmp_path / "seg3.png"
    cv2.imwrite(str(path3), np.dstack([labels] * 3))
    assert np.array_equal(load_label_map(path3, 16), out)


def test_load_label_map_reads_palette_indices(tmp_path):
    from PIL import Image

    labels = np.array([[0, 1, 2], [11, 12, 13]], np.uint8)
    image = Image.fromarray(labels, mode="L").convert("P")
    image.putpalette([value for i in range(256) for value in (i * 7 % 256, i * 13 % 256, i * 29 % 256)])
    path = tmp_path / "palette.png"
    image.save(path)
    assert np.array_equal(load_label_map(path, (2, 3)), labels)


def test_load_label_map_rejects_differing_channels(tmp_path):
    image = np.zeros((4, 4, 3), np.uint8)
    image[..., 1] = 2
    path = tmp_path / "colour.png"
    cv2.imwrite(str(path), image)
    with pytest.raises(ValueError, match=r"colour\.png.*differ"):
        load_label_map(path, 4)


def test_load_label_map_rejects_out_of_range_and_bad_files(tmp_path):
    path = tmp_path / "big.png"
    cv2.imwrite(str(path), np.full((4, 4), 19, np.uint8))
    with pytest.raises(ValueError, match=r"big\.png.*0..18"):
        load_label_map(path, 4)
    mt_ok = tmp_path / "mt.png"
    cv2.imwrite(str(mt_ok), np.full((4, 4), 13, np.uint8))
    assert (load_label_map(mt_ok, 4, order="mt") == 17).all()
    rgba = tmp_path / "rgba.png"
    cv2.imwrite(str(rgba), np.zeros((4, 4, 4), np.uint8))
    with pytest.raises(ValueError, match=r"rgba\.png.*channels"):
        load_label_map(rgba, 4)
    deep = tmp_path / "deep.png"
    cv2.imwrite(str(deep), np.full((4, 4), 3, np.uint16))
    with pytest.raises(ValueError, match=r"deep\.png.*8-bit"):
        load_label_map(deep, 4)
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"junk\.png"):
        load_label_map(junk, 4)
