"""CPU time of the built-in face parser per face and per stage, with an optional cProfile breakdown.

Usage: python tools/bench_parsing.py [FACES_DIR] [--method rules|net|both] [--size N] [--repeats R]
       [--cv-threads N] [--profile [N]] [--save FILE.npz] [--compare FILE.npz] [--no-parts]

What is timed: `parse_face(rgb, landmarks, method)` only (with --no-parts: parts=False, without the part
networks: eyes, brows, nose). The landmarks are detected beforehand (dlib,
once per photo, not timed), as in `shmt decompose`, which reads them from the aligned face. Photos are
the dev photos of FACES_DIR (default ../shared/faces, */images: about 309..369 px, unaligned) at their
own size, or resized to N x N with --size N (`shmt align` makes 256 px crops by default, which is what
`shmt decompose` parses).

Time is CPU time (time.process_time, all threads of the process) with torch on one thread and OpenCV
on --cv-threads threads (default 1; 0 keeps OpenCV's own default). Each photo is parsed --repeats times
(default 3) and its fastest run kept (the machine is shared); the table gives the median over the
photos of the whole parse and of each stage. Stages are the parser's steps as parsing.py and
parsing_net.py call them (timed by wrapping those functions; "rest" is the total minus the stages).
Medians of stages do not add up to the median total.

--profile [N] prints the N (default 25) functions with the largest cumulative time under cProfile over
one pass of all photos. --save writes every photo's labels to an npz; --compare reads such a file and
prints how many pixels differ per photo (byte-identical output is the proof that a speed-up kept the
labels), per method.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import pstats
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import torch

from shmt_cli.face import parsing, parsing_net, parsing_parts
from shmt_cli.face.detect import default_detector

FACES = Path(__file__).resolve().parents[2] / "shared" / "faces"

# (stage name, module, attribute): functions wrapped with a CPU timer. Only the names that parsing.py /
# parsing_net.py call from their own namespace, so that nested stages are not counted twice.
STAGES: dict[str, list[tuple[str, object, str]]] = {
    "rules": [
        ("skin (GrabCut)", parsing, "skin_region"),
        ("hair", parsing, "hair_region"),
        ("ears", parsing, "ear_zones"),
        ("nose", parsing, "nose_polygon"),
        ("Lab of windows", parsing, "rgb_to_lab"),
        ("eyes", parsing, "eye_region"),
        ("brows", parsing, "brow_region"),
        ("lips + mouth", parsing, "mouth_regions"),
        ("part networks", parsing_parts, "refine_parts"),
    ],
    "net": [
        ("rules prior (fast)", parsing, "parse_rules"),
        ("warp to crop", parsing_net, "warp_to_crop"),
        ("network input", parsing_net, "network_input"),
        ("network", parsing_net.ParsingNet, "residual"),
        ("logits to labels", parsing_net, "logits_to_labels"),
        ("part networks", parsing_parts, "refine_parts"),
    ],
}


def load_photos(faces_dir: Path, size: int | None) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, rgb, landmarks) of the dev photos that dlib finds a face in (resized to size x size)."""
    detector = default_detector()
    out = []
    for path in sorted(faces_dir.glob("*/images/*")):
        rgb = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        if size is not None:
            rgb = cv2.resize(rgb, (size, size), interpolation=cv2.INTER_AREA)
        faces = detector.detect(rgb)
        if faces:
            out.append((f"{path.parent.parent.name}/{path.name}", rgb, faces[0].landmarks))
    return out


@contextlib.contextmanager
def stage_timers(method: str, totals: dict[str, float]) -> Iterator[None]:
    """Wrap the method's stage functions so that their CPU time adds up in totals[stage]."""
    saved = []
    for name, owner, attr in STAGES[method]:
        original = getattr(owner, attr)

        def timed(*args, _original: Callable = original, _name: str = name, **kwargs):
            start = time.process_time()
            try:
                return _original(*args, **kwargs)
            finally:
                totals[_name] += time.process_time() - start

        saved.append((owner, attr, original))
        setattr(owner, attr, timed)
    try:
        yield
    finally:
        for owner, attr, original in saved:
            setattr(owner, attr, original)


def bench(
    photos: list[tuple[str, np.ndarray, np.ndarray]], method: str, repeats: int, parts: bool = True
) -> tuple[dict[str, list[float]], dict[str, np.ndarray]]:
    """Per stage (and "total"), each photo's fastest CPU seconds over repeats; and each photo's labels."""
    times: dict[str, list[float]] = defaultdict(list)
    labels = {}
    parsing.parse_face(photos[0][1], photos[0][2], method=method, parts=parts)  # warm-up (weights, caches)
    for name, rgb, landmarks in photos:
        best: dict[str, float] | None = None
        for _ in range(repeats):
            stages: dict[str, float] = defaultdict(float)
            with stage_timers(method, stages):
                start = time.process_time()
                out = parsing.parse_face(rgb, landmarks, method=method, parts=parts)
                stages["total"] = time.process_time() - start
            if best is None or stages["total"] < best["total"]:
                best = dict(stages)
            if name in labels and not np.array_equal(labels[name], out):
                raise SystemExit(f"{name}: {method} parse differs between runs")
            labels[name] = out
        assert best is not None
        best["rest"] = best["total"] - sum(v for k, v in best.items() if k != "total")
        for stage, _, _ in STAGES[method]:
            times[stage].append(best.get(stage, 0.0))
        times["rest"].append(best["rest"])
        times["total"].append(best["total"])
    return times, labels


def profile(photos: list[tuple[str, np.ndarray, np.ndarray]], method: str, top: int) -> None:
    """cProfile of one pass over the photos, the top functions by cumulative time."""
    profiler = cProfile.Profile(time.process_time)
    profiler.enable()
    for _, rgb, landmarks in photos:
        parsing.parse_face(rgb, landmarks, method=method)
    profiler.disable()
    print(f"\ncProfile, method {method}, {len(photos)} photos (CPU seconds, all photos together):")
    pstats.Stats(profiler).sort_stats("cumulative").print_stats(top)


def load_average() -> str:
    """The 1, 5 and 15 minute load averages as uptime prints them."""
    out = subprocess.run(["uptime"], capture_output=True, text=True).stdout
    return out.strip().split("load average:")[-1]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("faces", nargs="?", type=Path, default=FACES)
    parser.add_argument("--method", choices=("rules", "net", "both"), default="both")
    parser.add_argument("--size", type=int, help="resize the photos to N x N first")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cv-threads", type=int, default=1, help="OpenCV threads (0: its default)")
    parser.add_argument("--profile", type=int, nargs="?", const=25, default=0)
    parser.add_argument("--save", type=Path, help="write the labels of every photo and method (npz)")
    parser.add_argument("--compare", type=Path, help="count differing pixels against a --save file")
    parser.add_argument(
        "--no-parts", action="store_true", help="parse without the part networks (eyes, brows, nose)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.cv_threads > 0:
        cv2.setNumThreads(args.cv_threads)
    photos = load_photos(args.faces, args.size)
    if not photos:
        print(f"no photos with a face under {args.faces}", file=sys.stderr)
        return 1
    load = (
        subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip().split("load average:")[-1]
    )
    size = f"{args.size} px" if args.size else "own size"
    print(
        f"{len(photos)} photos ({size}), landmarks given; torch 1 thread, OpenCV {cv2.getNumThreads()}"
        f" threads; fastest of {args.repeats} per photo; load average{load}"
    )
    methods = ("rules", "net") if args.method == "both" else (args.method,)
    saved: dict[str, np.ndarray] = {}
    reference = dict(np.load(args.compare)) if args.compare else None
    for method in methods:
        times, labels = bench(photos, method, args.repeats, not args.no_parts)
        print(f"\nmethod {method}: median CPU ms per face")
        for stage, values in times.items():
            print(f"  {stage:<20} {np.median(values) * 1000:7.1f}")
        for name, out in labels.items():
            saved[f"{method}:{name}"] = out
        if reference is not None:
            diffs = {n: int((reference[f"{method}:{n}"] != out).sum()) for n, out in labels.items()}
            changed = {n: d for n, d in diffs.items() if d}
            print(f"  vs {args.compare.name}: {len(changed)} of {len(diffs)} photos differ", end="")
            print("".join(f"\n    {n}: {d} px" for n, d in changed.items()))
        if args.profile:
            profile(photos, method, args.profile)
    after = (
        subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip().split("load average:")[-1]
    )
    print(f"\nload average at the end{after}")
    if args.save:
        np.savez_compressed(args.save, **saved)
        print(f"wrote {args.save}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
