"""Seconds of `shmt transfer` with 0, 1, 2 ... preparation threads (`--workers N`, local runs): the
numbers the default of --workers is chosen from.

Inputs are the dev photos in ../shared/faces (S sources × R references, copied to a temporary folder,
never into the project); every run writes a fresh output folder, so every face is really prepared and
every pair really made. Each setting runs in its own process, the settings interleaved `--repeat`
times (the machine is shared, so a slow spell hits all settings alike); the table gives the run's own
seconds (the summary's, without Python's start and the engine's load) as median and range. The outputs
of every setting are compared byte for byte with those of the first (results must not depend on
--workers).

    python tools/bench_prepare_workers.py --engine classic [--sources 8] [--references 2]
    python tools/bench_prepare_workers.py --engine shmt --weights-dir DIR -- --steps 3 --batch-size 2
"""

from __future__ import annotations

import argparse
import filecmp
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

# The executor benchmark's inputs: dev photos from ../shared/faces copied to a temporary folder.
from bench_executors import make_inputs


def run_once(command: list[str], out: Path) -> float:
    """One transfer into `out`: the run's own seconds (from its --json summary)."""
    done = subprocess.run([*command, "-o", str(out), "--json", "--quiet"], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"transfer failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    return float(json.loads(done.stdout.splitlines()[-1])["seconds"])


def same_outputs(first: Path, other: Path) -> bool:
    """Whether every image `first` holds is byte-identical in `other` (parts files and the manifest
    hold run-dependent metadata and timings, so they are left out)."""
    for path in first.rglob("*"):
        if path.suffix.lower() in (".png", ".jpg", ".webp") and not filecmp.cmp(
            path, other / path.relative_to(first), shallow=False
        ):
            return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--engine", default="classic", choices=("classic", "shmt"))
    parser.add_argument("--weights-dir", type=Path, help="shmt: an imported weights folder")
    parser.add_argument("--sources", type=int, default=8)
    parser.add_argument("--references", type=int, default=2)
    parser.add_argument("--workers", default="0,1,2", help="settings to compare, e.g. 0,1,2")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("extra", nargs="*", help="further transfer options (after --)")
    args = parser.parse_args()
    settings = [int(text) for text in args.workers.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench-workers-") as tmp:
        root = Path(tmp)
        sources, references = make_inputs(root, args.sources, args.references)
        command = [sys.executable, "-m", "shmt_cli", "transfer", str(sources), str(references)]
        command += ["--engine", args.engine, "--crop", "--format", "png", *args.extra]
        if args.weights_dir is not None:
            command += ["--weights-dir", str(args.weights_dir)]
        # A first run is slower whatever its setting (files and models not yet in the page cache).
        run_once([*command, "--workers", "0"], root / "warm-up")
        seconds: dict[int, list[float]] = {n: [] for n in settings}
        identical = True
        for round_ in range(args.repeat):
            for workers in settings:
                out = root / f"out-{workers}-{round_}"
                seconds[workers].append(run_once([*command, "--workers", str(workers)], out))
                identical &= same_outputs(root / f"out-{settings[0]}-0", out)
                print(
                    f"round {round_ + 1}: --workers {workers}: {seconds[workers][-1]:.2f} s", file=sys.stderr
                )
    pairs = args.sources * args.references
    print(
        f"{args.engine}, {pairs} pairs ({args.sources} sources x {args.references} references), {args.extra}"
    )
    print("workers  median s  min s  max s  s/pair")
    for workers, values in seconds.items():
        median = statistics.median(values)
        print(f"{workers:7d}  {median:8.2f}  {min(values):5.2f}  {max(values):5.2f}  {median / pairs:6.3f}")
    print(f"outputs identical across settings: {identical}")


if __name__ == "__main__":
    main()
