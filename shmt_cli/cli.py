"""The `shmt` command line: parses options, calls the library, prints. No image logic here.

Exit codes: 0 all done; 1 some inputs failed; 2 usage error; 3 the run could not start or go on
(output folder locked by another run, not writable, disk full). The options every batch command shares
and the mapping of errors to exit codes are in `cli_batch.py`; `shmt train` is in `cli_train.py`,
`shmt weights ...` in `cli_weights.py`.
"""

from __future__ import annotations

import contextlib
import functools
import signal
import threading
import warnings
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from shmt_cli import __version__
from shmt_cli.batch import EXIT_CANNOT_RUN, EXIT_USAGE, BatchRunner, CannotRun, Summary, make_console
from shmt_cli.cli_batch import (
    BatchArgs,
    Inputs,
    JsonOut,
    OutDir,
    Quiet,
    batch_options,
    error_exit,
    print_failures,
    run_batch,
    stop_on_sigterm,
)
from shmt_cli.cli_train import train
from shmt_cli.cli_weights import weights_app
from shmt_cli.inputs import UsageError

app = typer.Typer(
    name="shmt",
    help="Batch makeup transfer: align faces, decompose them, transfer makeup, evaluate results.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"shmt {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """shmt: makeup transfer for folders of photos."""
    # Torch's warnings (pickle protocol of a checkpoint, deprecations) speak to developers, name no input
    # and break the one-line-per-problem output; what matters to users is reported by us.
    warnings.filterwarnings("ignore", module=r"torch(\.|$)")
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, stop_on_sigterm)


app.add_typer(weights_app, name="weights")

TRANSFER_FILES_FROM = (
    "Source photos, one per line ('-': stdin); a single positional argument is the references."
)


@app.command()
@batch_options()
def align(
    output: OutDir,
    inputs: Inputs = None,
    size: Annotated[int, typer.Option("--size", min=64, max=2048, help="Crop size in pixels.")] = 256,
    all_faces: Annotated[
        bool, typer.Option("--all-faces", help="Write every face found, not just the best one.")
    ] = False,
    batch: BatchArgs = BatchArgs(),
) -> None:
    """Detect, landmark and crop faces into SHMT (MT-dataset) framing, with a JSON sidecar per face."""
    from shmt_cli.pipelines.align import AlignSettings, run_align

    def job() -> tuple[BatchRunner, Summary]:
        options = batch.run_options()
        return run_align(batch.inputs(inputs or [], options), output, AlignSettings(size, all_faces), options)

    run_batch(job)


@app.command()
@batch_options()
def decompose(
    output: OutDir,
    inputs: Inputs = None,
    parsing: Annotated[
        Path | None,
        typer.Option("--parsing", help="Folder of external parsing maps (PNG, named like the faces)."),
    ] = None,
    parsing_order: Annotated[
        str, typer.Option("--parsing-order", help="Label order of --parsing maps: celebamask, bisenet or mt.")
    ] = "celebamask",
    render3d: Annotated[
        Path | None,
        typer.Option("--render3d", help="Folder of external 3D renders (<name>_3d.jpg or <name>.png)."),
    ] = None,
    sheet: Annotated[
        bool, typer.Option("--contact-sheet/--no-contact-sheet", help="Write contact_sheet.png.")
    ] = True,
    batch: BatchArgs = BatchArgs(),
) -> None:
    """Parse faces, render their 3D surface and build SHMT's representations (previews + a parts file)."""
    from shmt_cli.pipelines.decompose import DecomposeSettings, run_decompose

    def job() -> tuple[BatchRunner, Summary]:
        options = batch.run_options()
        settings = DecomposeSettings(parsing_dir=parsing, parsing_order=parsing_order, render_dir=render3d)
        return run_decompose(batch.inputs(inputs or [], options), output, settings, options, sheet=sheet)

    run_batch(job)


@app.command()
@batch_options(files_from_help=TRANSFER_FILES_FROM)
def transfer(
    output: OutDir,
    sources: Annotated[
        str | None, typer.Argument(help="Source photo or folder (faces that get makeup).")
    ] = None,
    references: Annotated[
        str | None, typer.Argument(help="Reference photo or folder (makeup to copy).")
    ] = None,
    engine: Annotated[
        str, typer.Option("--engine", help="auto (shmt when its weights are installed), shmt, classic.")
    ] = "auto",
    level: Annotated[
        str | None,
        typer.Option("--level", help="shmt: h0, h4 or mix (default mix); classic: h0..h4 (default h0)."),
    ] = None,
    mix: Annotated[
        float, typer.Option("--mix", min=0.0, max=1.0, help="mix: share of steps for the h4 model.")
    ] = 0.5,
    steps: Annotated[int, typer.Option("--steps", min=1, max=1000, help="Sampler steps (shmt).")] = 50,
    sampler: Annotated[
        str, typer.Option("--sampler", help="shmt: ddim (official) or dpmpp (DPM-Solver++, try --steps 20).")
    ] = "ddim",
    seed: Annotated[
        int, typer.Option("--seed", help="Base seed; each pair derives its own noise from it.")
    ] = 321,
    ida: Annotated[
        str, typer.Option("--ida", help="released (official inference) or paper (training form).")
    ] = "released",
    ema_both: Annotated[
        bool, typer.Option("--ema-both", help="mix: use EMA weights for both models.")
    ] = False,
    pairs: Annotated[
        str, typer.Option("--pairs", help="all, zip, or a CSV file source,reference[,output].")
    ] = "all",
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Pairs per engine batch.")] = 4,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")] = "auto",
    dtype: Annotated[str, typer.Option("--dtype", help="fp32, bf16 or fp16.")] = "fp32",
    vq_dtype: Annotated[
        str, typer.Option("--vq-dtype", help="shmt: fp32 or bf16 for the VQ autoencoder.")
    ] = "fp32",
    compile_model: Annotated[
        bool | None, typer.Option("--compile/--no-compile", help="torch.compile (default: on for CUDA).")
    ] = None,
    regions: Annotated[
        str, typer.Option("--regions", help="Face regions that take the makeup (skin, eyes, brows, lips).")
    ] = "lips,eyes,skin,brows",
    strength: Annotated[
        str | None, typer.Option("--strength", help="0..1 for every region, or lips=1,skin=0.5.")
    ] = None,
    crop: Annotated[bool, typer.Option("--crop", help="Also write the 256x256 result crop.")] = False,
    grid: Annotated[bool, typer.Option("--grid", help="Also write the official 3-panel strip.")] = False,
    all_faces: Annotated[
        bool,
        typer.Option("--all-faces", help="Make up every face of a group photo (all pasted into one output)."),
    ] = False,
    out_format: Annotated[
        str,
        typer.Option(
            "--format", help="Output format: same (the source's; JPEG stays JPEG), png, jpg or webp."
        ),
    ] = "same",
    quality: Annotated[
        int | None, typer.Option("--quality", min=1, max=100, help="jpg/webp quality (default 92/90).")
    ] = None,
    cache: Annotated[
        bool,
        typer.Option("--cache/--no-cache", help="Keep the prepared faces under out/faces/ (for `evaluate`)."),
    ] = True,
    weights_dir: Annotated[
        Path | None, typer.Option("--weights-dir", help="Where imported weights are.")
    ] = None,
    executor: Annotated[
        str, typer.Option("--executor", help="local (this process) or ray (a Ray cluster; shmt[ray]).")
    ] = "local",
    ray_address: Annotated[
        str | None,
        typer.Option(
            "--ray-address", metavar="ADDR", help="ray: cluster to join (default $RAY_ADDRESS, else local)."
        ),
    ] = None,
    gpus_per_worker: Annotated[
        float,
        typer.Option("--gpus-per-worker", metavar="F", help="ray: GPUs per engine worker (e.g. 1, 0.5)."),
    ] = 0.0,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            metavar="N",
            help="local: threads preparing the next batches' faces while the engine runs; "
            "ray: engine workers (default: all GPUs/CPUs).",
        ),
    ] = None,
    batch: BatchArgs = BatchArgs(),
) -> None:
    """Put the makeup of each reference onto each source; results keep the source photo's size."""

    from shmt_cli.executors import ExecutorOptions, check_executor_options, engine_by_name, make_executor
    from shmt_cli.pipelines import transfer as tr
    from shmt_cli.pipelines.pairs import check_pair_inputs
    from shmt_cli.pipelines.regions import parse_regions, parse_strengths

    def job() -> tuple[BatchRunner, Summary]:
        options = batch.run_options()
        source_list, reference_list = batch.pair_inputs(sources, references, pairs, options)
        check_pair_inputs(source_list, reference_list, pairs)
        tr.check_output_format(out_format)
        engine_options = {
            "level": level,
            "mix": mix,
            "steps": steps,
            "sampler": sampler,
            "ida": ida,
            "ema_both": ema_both,
            "batch_size": batch_size,
            "device": device,
            "dtype": dtype,
            "vq_dtype": vq_dtype,
            "compile": compile_model,
            "regions": parse_regions(regions),
            "strengths": parse_strengths(strength),
        }
        # --workers: preparation threads here, engine workers on ray.
        local_workers = tr.DEFAULT_WORKERS if workers is None else workers
        if local_workers < 0:
            raise UsageError(f"--workers must be >= 0, got {local_workers}")
        where = ExecutorOptions(
            executor, ray_address, gpus_per_worker, None if executor == "local" else workers
        )
        check_executor_options(where)  # before the weights load
        chosen, note = tr.open_engine(engine, engine_options, weights_dir)
        # Workers build the engine chosen here (not `auto` again, which could choose differently there).
        runs_on = make_executor(
            where, functools.partial(engine_by_name, chosen.name, engine_options, weights_dir)
        )
        if not batch.quiet:
            where_prepared = f"{local_workers} preparation workers" if runs_on is None else "on ray"
            make_console().print(f"{note}; {chosen.describe()}; {where_prepared}")
        settings = tr.TransferSettings(
            pairs=pairs,
            seed=seed,
            crop=crop,
            grid=grid,
            all_faces=all_faces,
            format=out_format,
            quality=quality,
            keep_faces=cache,
            regions=engine_options["regions"],
            strengths=engine_options["strengths"],
        )
        return tr.run_transfer(
            source_list, reference_list, output, chosen, settings, options, runs_on, local_workers
        )

    run_batch(job)


@app.command()
def evaluate(
    results: Annotated[list[Path], typer.Argument(help="Results folder(s) written by `shmt transfer`.")],
    compare: Annotated[
        bool, typer.Option("--compare", help="Compare the folders side by side over the pairs they share.")
    ] = False,
    csv_out: Annotated[Path | None, typer.Option("--csv", help="Write per-pair metrics as CSV here.")] = None,
    json_out: JsonOut = False,
    plot: Annotated[
        Path | None, typer.Option("--plot", help="Write a PNG with one box plot per metric.")
    ] = None,
    paper: Annotated[
        bool,
        typer.Option("--paper", help="Also the paper's metrics: FID, DINO CLS and Key-sim (local weights)."),
    ] = False,
    dino_weights: Annotated[
        Path | None,
        typer.Option("--dino-weights", help="dino_vitbase8_pretrain.pth (default: weights/metrics/)."),
    ] = None,
    inception_weights: Annotated[
        Path | None,
        typer.Option(
            "--inception-weights", help="pt_inception-2015-12-05-6726825d.pth (default: weights/metrics/)."
        ),
    ] = None,
    device: Annotated[
        str, typer.Option("--device", help="Device for the paper's networks: cpu or cuda.")
    ] = "cpu",
    quiet: Quiet = False,
) -> None:
    """Quality metrics of transfer results: weight-free ones always, the paper's with --paper."""
    from shmt_cli.pipelines import evaluate as ev
    from shmt_cli.pipelines.evaluate_report import summary_json_line, summary_tables

    console = make_console()

    def status(folder: Path) -> contextlib.AbstractContextManager[object]:
        return contextlib.nullcontext() if quiet else console.status(f"evaluating {escape(str(folder))}")

    try:
        ev.check_request(results, csv_out, plot)
        models = ev.load_paper_models(dino_weights, inception_weights, device) if paper else None
        evaluation = ev.evaluate_folders(results, models, compare, status)
        ev.write_reports(evaluation, csv_out, plot)
    except UsageError as exc:
        raise error_exit(str(exc), EXIT_USAGE) from None
    except ev.NothingToEvaluate as exc:
        print_failures(console, exc.failures)  # say why each pair could not be evaluated
        raise error_exit(str(exc), 1) from None
    except CannotRun as exc:
        raise error_exit(str(exc), EXIT_CANNOT_RUN) from None
    if json_out:
        typer.echo(summary_json_line(evaluation.folders, evaluation.pairs))
    if not quiet:
        for table in summary_tables(evaluation.folders, evaluation.pairs):
            console.print(table)
    print_failures(console, evaluation.failures)
    raise typer.Exit(1 if evaluation.failures else 0)


app.command()(train)  # listed after evaluate in --help, as before


@app.command("manifest-merge")
def manifest_merge(
    folder: Annotated[Path, typer.Argument(help="Output folder that shards wrote into.")],
    expect: Annotated[
        int | None,
        typer.Option("--expect", help="Number of items the whole job has; missing ones are reported."),
    ] = None,
) -> None:
    """Combine the shard manifests of a folder into manifest.jsonl and report failed or missing items."""
    from shmt_cli.manifest import merge_manifests

    if expect is not None and expect < 0:
        raise error_exit(f"--expect takes the number of items of the job (>= 0), got {expect}", EXIT_USAGE)

    if not folder.is_dir():
        raise error_exit(f"not a folder: {folder}", EXIT_USAGE)
    from shmt_cli.lock import live_locks

    console = make_console()
    for name, info in live_locks(folder):
        # Its records so far are merged, but it is still working: the merged manifest is not final.
        console.print(
            f"[yellow]note[/yellow]: {escape(name)} is held by PID {info.get('pid')} on {info.get('host')}: "
            "that run is still going, merge again when it has finished"
        )
    merged, path = merge_manifests(folder)
    statuses = [r.get("status") for r in merged.values()]
    ok, failed = statuses.count("ok"), statuses.count("failed")
    console.print(f"{escape(str(path))}: {len(merged)} items, {ok} ok, {failed} failed")
    missing = (expect - len(merged)) if expect is not None else 0
    if missing > 0:
        console.print(f"[red]missing[/red]: {missing} of {expect} items have no record")
    raise typer.Exit(1 if failed or missing > 0 else 0)


if __name__ == "__main__":  # pragma: no cover
    app()
