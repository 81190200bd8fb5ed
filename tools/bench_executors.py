"""Pairs per second of `shmt transfer` (classic engine) with `--executor local` and `--executor ray` on this
machine, and a simple cost model: from what job size Ray pays off.

Inputs are made at run time from the dev photos in ../shared/faces (copied to a temporary folder, never
into the project): S source photos × R reference photos, all pairs. Each executor runs a small job
(S × 1) and the full job (S × R) into fresh output folders, so faces and pairs are all really computed.
A line through the two points, T(n) = a + b·n seconds for n pairs, gives each executor's per-job cost a
and per-pair cost b; Ray pays off for n > (a_ray - a_local) / (b_local - b_ray) when b_ray < b_local.
Ray's own start (a local instance here; on a cluster it is already up) is timed apart and left out.

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
from shmt_cli.engines.select import EngineRequest, create_engine
from shmt_cli.executors import ExecutorOptions, engine_from_request, make_executor
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


def timed_run(sources: Path, references: Path, out: Path, executor: ExecutorOptions) -> tuple[float, int]:
    """(wall seconds, pairs done) of one transfer into a fresh folder."""
    request = EngineRequest(engine="classic", level="h2")
    engine, _ = create_engine(request)
    runs_on = make_executor(executor, functools.partial(engine_from_request, request))
    options = RunOptions(quiet=True)
    started = time.perf_counter()
    _, summary = run_transfer(
        [str(sources)], [str(references)], out, engine, TransferSettings(), options, runs_on
    )
    return time.perf_counter() - started, summary.done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sources", type=int, default=15)
    parser.add_argument("--references", type=int, default=7)
    parser.add_argument("--workers", type=int, default=2, help="Ray engine actors")
    args = parser.parse_args()
    if not FACES.is_dir():
        raise SystemExit(f"dev photos not found: {FACES}")

    import ray

    from shmt_cli.executors.ray import connect

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        sources, references = make_inputs(root, args.sources, args.references)
        small_refs = root / "one_reference"
        small_refs.mkdir()
        first = sorted(references.iterdir())[0]
        shutil.copyfile(first, small_refs / first.name)

        started = time.perf_counter()
        connect()
        ray_start = time.perf_counter() - started
        executors = {
            "local": ExecutorOptions("local"),
            "ray": ExecutorOptions("ray", workers=args.workers),
        }
        results: dict[str, list[tuple[int, float]]] = {name: [] for name in executors}
        try:
            for label, refs in (("small", small_refs), ("full", references)):
                for name, executor in executors.items():
                    seconds, done = timed_run(sources, refs, root / f"out_{name}_{label}", executor)
                    results[name].append((done, seconds))
                    print(
                        f"{name:5s} {done:4d} pairs  {seconds:7.1f} s  {done / seconds:6.2f} pairs/s",
                        flush=True,
                    )
        finally:
            ray.shutdown()

    print(f"\nray start (local instance, not counted above): {ray_start:.1f} s")
    fits = {}
    for name, points in results.items():
        (n1, t1), (n2, t2) = points
        per_pair = (t2 - t1) / (n2 - n1)
        per_job = t1 - per_pair * n1
        fits[name] = (per_job, per_pair)
        print(
            f"{name:5s} per job {per_job:6.1f} s   per pair {per_pair:5.2f} s"
            f"   ({1 / per_pair:.2f} pairs/s at scale)"
        )
    (a_local, b_local), (a_ray, b_ray) = fits["local"], fits["ray"]
    full = results["local"][1][0]
    overhead = results["ray"][1][1] / results["local"][1][1] - 1
    print(f"ray vs local on the full job ({full} pairs): {overhead:+.0%} wall time")
    if b_ray < b_local:
        print(f"ray pays off on this machine above about {(a_ray - a_local) / (b_local - b_ray):.0f} pairs")
    else:
        print("ray does not pay off on this machine at any size (its per-pair cost is not lower)")
    print(
        "on k machines like this one, a big job: ray per pair ≈ "
        f"{b_ray:.2f}/k s; break-even n ≈ {a_ray - a_local:.0f} / ({b_local:.2f} - {b_ray:.2f}/k)"
    )


if __name__ == "__main__":
    main()
