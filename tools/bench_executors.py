"""Pairs per second of `shmt transfer` (classic engine) with `--executor local` and `--executor ray` on this
machine, and a simple cost model: from what job size Ray pays off.

Inputs are made at run time from the dev photos in ../shared/faces (copied to a temporary folder, never
into the project): S source photos × R reference photos. After a one-pair warm-up job (imports, model
files, Ray's worker processes), each executor runs a small job (max(S, R) pairs using every photo) and
the full job (S × R pairs) into fresh output folders, so faces and pairs are all really computed; both
prepare the same S + R faces. A line through the two points, T(n) = a + b·n seconds for n pairs, gives
each executor's per-job cost a (start-up plus preparing the faces) and per-pair cost b; Ray pays off for
n > (a_ray - a_local) / (b_local - b_ray) when b_ray < b_local. Ray's own start (a local instance here;
on a cluster it is already up) is timed apart and left out.

The machine is shared (2 cores, other jobs running): the numbers are noisy; run it twice.

    python tools/bench_executors.py [--sources 15] [--references 7] [--workers 2]
"""

from __future__ import annotations

import argparse
import functools
import shutil
import tempfile
import time
from pathlib import Path

from shmt_cli.batch import RunOptions
from shmt_cli.engines.registry import create_engine
from shmt_cli.executors import ExecutorOptions, engine_by_name, make_executor
from shmt_cli.pipelines.transfer import TransferSettings, run_transfer

FACES = Path(__file__).resolve().parents[1].parent / "shared" / "faces"


def make_inputs(root: Path, sources: int, references: int) -> tuple[Path, Path]:
    """Copy the first `sources` / `references` dev photos into root/sources and root/references."""
    folders = []
    for kind, count, name in (("non_makeup", sources, "sources"), ("makeup", references, "references")):
        photos = sorted((FACES / kind / "images").iterdir())[:count]
        if len(photos) < count:
            raise SystemExit(f"only {len(photos)} {kind} photos in {FACES}")
        folder = root / name
        folder.mkdir()
        for photo in photos:
            shutil.copyfile(photo, folder / photo.name)
        folders.append(folder)
    return folders[0], folders[1]


def write_pairs(path: Path, sources: Path, references: Path, job: str) -> Path:
    """A pairs CSV. `full`: every source × every reference; `small`: as few pairs as use every source and
    every reference (source i with reference i mod R), so both sizes prepare the same faces; `one`: a pair."""
    srcs, refs = sorted(sources.iterdir()), sorted(references.iterdir())
    if job == "full":
        rows = [(s, r) for r in refs for s in srcs]
    else:
        count = 1 if job == "one" else max(len(srcs), len(refs))
        rows = [(srcs[i % len(srcs)], refs[i % len(refs)]) for i in range(count)]
    path.write_text("".join(f"{s},{r}\n" for s, r in rows))
    return path


def timed_run(pairs_csv: Path, out: Path, executor: ExecutorOptions) -> tuple[float, int]:
    """(wall seconds, pairs done) of one transfer into a fresh folder."""
    engine_options = {"level": "h2"}
    engine, _ = create_engine("classic", engine_options)
    runs_on = make_executor(executor, functools.partial(engine_by_name, "classic", engine_options, None))
    options = RunOptions(quiet=True)
    started = time.perf_counter()
    settings = TransferSettings(pairs=str(pairs_csv))
    _, summary = run_transfer([], [], out, engine, settings, options, runs_on)
    return time.perf_counter() - started, summary.done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sources", type=int, default=15)
    parser.add_argument("--references", type=int, default=7)
    parser.add_argument("--workers", type=int, default=2, help="Ray engine actors")
    parser.add_argument("--repeat", type=int, default=2, help="runs per point; the fastest counts")
    args = parser.parse_args()
    if not FACES.is_dir():
        raise SystemExit(f"dev photos not found: {FACES}")

    import ray

    from shmt_cli.executors.ray import connect

    executors = {"local": ExecutorOptions("local"), "ray": ExecutorOptions("ray", workers=args.workers)}
    points: dict[str, dict[int, float]] = {name: {} for name in executors}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        sources, references = make_inputs(root, args.sources, args.references)
        jobs = {
            "warm-up": write_pairs(root / "one.csv", sources, references, "one"),
            "small": write_pairs(root / "small.csv", sources, references, "small"),
            "full": write_pairs(root / "full.csv", sources, references, "full"),
        }
        started = time.perf_counter()
        connect()
        print(f"ray start (a local instance; a cluster is already up): {time.perf_counter() - started:.1f} s")
        try:
            run = 0
            for label, csv in jobs.items():
                for _ in range(1 if label == "warm-up" else args.repeat):
                    for name, executor in executors.items():
                        run += 1
                        seconds, done = timed_run(csv, root / f"out{run}", executor)
                        if label != "warm-up":
                            points[name][done] = min(seconds, points[name].get(done, seconds))
                        rate = f"{done / seconds:6.2f} pairs/s"
                        print(f"{label:8s} {name:5s} {done:4d} pairs {seconds:7.1f} s {rate}", flush=True)
        finally:
            ray.shutdown()

    print(f"\nfastest of {args.repeat}; {args.sources + args.references} faces prepared in every job")
    fits = {}
    for name, by_size in points.items():
        (n1, t1), (n2, t2) = sorted(by_size.items())
        per_pair = (t2 - t1) / (n2 - n1)
        fits[name] = (t1 - per_pair * n1, per_pair)
        print(
            f"{name:5s} {n1} pairs {t1:6.1f} s, {n2} pairs {t2:6.1f} s ({n2 / t2:.2f} pairs/s): "
            f"per job {fits[name][0]:5.1f} s, per pair {per_pair:.3f} s"
        )
    (a_local, b_local), (a_ray, b_ray) = fits["local"], fits["ray"]
    n_full = max(points["local"])
    overhead = points["ray"][n_full] / points["local"][n_full] - 1
    print(f"ray vs local, {n_full} pairs: {overhead:+.0%} wall time")
    if b_ray < b_local:
        print(f"ray pays off on this machine above about {(a_ray - a_local) / (b_local - b_ray):.0f} pairs")
    else:
        print("on this machine ray does not pay off at any size: its per-pair cost is not lower")


if __name__ == "__main__":
    main()
