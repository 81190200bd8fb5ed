"""The `shmt` command line: parses options, calls the library, prints. No image logic here.

Exit codes: 0 all done; 1 some inputs failed; 2 usage error; 3 the run could not start or go on
(output folder locked by another run, not writable, disk full).
"""

from __future__ import annotations

import functools
import os
import signal
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Annotated, TypeVar

import typer
from rich.markup import escape

from shmt_cli import __version__
from shmt_cli.batch import (
    EXIT_CANNOT_RUN,
    EXIT_USAGE,
    BatchRunner,
    CannotRun,
    RunOptions,
    Summary,
    make_console,
)
from shmt_cli.inputs import Shard, UsageError, read_file_list

app = typer.Typer(
    name="shmt",
    help="Batch makeup transfer: align faces, decompose them, transfer makeup, evaluate results.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

T = TypeVar("T")

Inputs = Annotated[
    list[str] | None, typer.Argument(help="Photos and/or folders (searched recursively).", show_default=False)
]


def _output_folder(text: str) -> Path:
    # Path("") is Path("."): an empty -o (an unset shell variable) would write into the current folder.
    if not text.strip():
        raise typer.BadParameter("the output folder is empty (an unset variable?); give a folder")
    return Path(text)


OutDir = Annotated[
    Path, typer.Option("--output", "-o", parser=_output_folder, help="Output folder (created if missing).")
]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Redo items whose outputs already exist.")]
RetryFailed = Annotated[
    bool, typer.Option("--retry-failed", help="Retry items that failed in an earlier run.")
]
JsonOut = Annotated[
    bool, typer.Option("--json", help="Stream one JSON line per item, then a JSON summary, on stdout.")
]
Quiet = Annotated[
    bool, typer.Option("--quiet", "-q", help="For cron: no progress bar or summary, errors only.")
]
ShardOpt = Annotated[
    str | None,
    typer.Option("--shard", metavar="K/N", help="Do only part K of N (1-based), e.g. for job arrays."),
]
FilesFrom = Annotated[
    str | None,
    typer.Option("--files-from", metavar="FILE", help="Read more inputs, one per line ('-': stdin)."),
]
WaitLock = Annotated[
    float,
    typer.Option(
        "--wait-lock", metavar="SECONDS", help="Wait this long for another run on the output folder."
    ),
]
LogFile = Annotated[Path | None, typer.Option("--log", help="Append a line per item and the summary here.")]


class Stopped(BaseException):
    """SIGTERM arrived (BaseException, like KeyboardInterrupt: no `except Exception` swallows it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    # Unwind like Ctrl-C: the lock is released and half-written temp files are removed on the way out.
    raise Stopped(signum)


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
        signal.signal(signal.SIGTERM, _stop_on_sigterm)


def _error_exit(message: str, code: int) -> typer.Exit:
    make_console().print(f"[red]error[/red]: {escape(message)}")
    return typer.Exit(code)


def run_options(
    overwrite: bool,
    retry_failed: bool,
    json_out: bool,
    quiet: bool,
    shard: str | None,
    wait_lock: float,
    log: Path | None,
) -> RunOptions:
    """The shared batch options from the command line."""
    if wait_lock < 0:
        raise UsageError(f"--wait-lock takes seconds >= 0 (0: do not wait), got {wait_lock:g}")
    if log is not None:
        check_log_file(log)
    return RunOptions(
        overwrite=overwrite,
        retry_failed=retry_failed,
        json_lines=json_out,
        quiet=quiet,
        shard=Shard.parse(shard),
        wait_lock=wait_lock,
        log_file=log,
    )


def check_log_file(log: Path) -> None:
    """UsageError unless --log can be appended to (checked before the run, not mid-batch)."""
    if log.is_dir():
        raise UsageError(f"--log {log}: is a folder, give a file name")
    try:
        with open(log, "a", encoding="utf-8"):
            pass
    except OSError as exc:
        raise UsageError(f"--log {log}: cannot write ({exc.strerror or exc})") from None


def all_inputs(inputs: list[str] | None, files_from: str | None, options: RunOptions) -> list[str]:
    """Positional inputs plus those listed with --files-from (recorded in `options`: a missing listed
    file fails as one item, while a missing positional path is a usage error)."""
    listed = read_file_list(files_from) if files_from else []
    options.listed_inputs = frozenset(listed)
    return [*(inputs or []), *listed]


def run_batch(job: Callable[[], tuple[BatchRunner, Summary]]) -> None:
    """Run a batch job, print its report and exit with its code (usage and fatal errors mapped)."""
    try:
        runner, summary = job()
    except KeyboardInterrupt:
        raise _error_exit("interrupted (Ctrl-C); finished items are kept, run again to resume", 130) from None
    except Stopped as stop:
        name = signal.Signals(stop.signum).name
        raise _error_exit(
            f"stopped by {name}; finished items are kept, run again to resume", 128 + stop.signum
        ) from None
    except UsageError as exc:
        raise _error_exit(str(exc), EXIT_USAGE) from None
    except CannotRun as exc:
        raise _error_exit(str(exc), EXIT_CANNOT_RUN) from None
    runner.report(summary)
    raise typer.Exit(summary.exit_code)


@app.command()
def align(
    output: OutDir,
    inputs: Inputs = None,
    size: Annotated[int, typer.Option("--size", min=64, max=2048, help="Crop size in pixels.")] = 256,
    all_faces: Annotated[
        bool, typer.Option("--all-faces", help="Write every face found, not just the best one.")
    ] = False,
    overwrite: Overwrite = False,
    retry_failed: RetryFailed = False,
    json_out: JsonOut = False,
    quiet: Quiet = False,
    shard: ShardOpt = None,
    files_from: FilesFrom = None,
    wait_lock: WaitLock = 0.0,
    log: LogFile = None,
) -> None:
    """Detect, landmark and crop faces into SHMT (MT-dataset) framing, with a JSON sidecar per face."""
    from shmt_cli.pipelines.align import AlignSettings, run_align

    def job() -> tuple[BatchRunner, Summary]:
        options = run_options(overwrite, retry_failed, json_out, quiet, shard, wait_lock, log)
        return run_align(
            all_inputs(inputs, files_from, options), output, AlignSettings(size, all_faces), options
        )

    run_batch(job)


@app.command()
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
    overwrite: Overwrite = False,
    retry_failed: RetryFailed = False,
    json_out: JsonOut = False,
    quiet: Quiet = False,
    shard: ShardOpt = None,
    files_from: FilesFrom = None,
    wait_lock: WaitLock = 0.0,
    log: LogFile = None,
) -> None:
    """Parse faces, render their 3D surface and build SHMT's representations (previews + a parts file)."""
    from shmt_cli.pipelines.decompose import DecomposeSettings, run_decompose

    def job() -> tuple[BatchRunner, Summary]:
        options = run_options(overwrite, retry_failed, json_out, quiet, shard, wait_lock, log)
        settings = DecomposeSettings(parsing_dir=parsing, parsing_order=parsing_order, render_dir=render3d)
        return run_decompose(all_inputs(inputs, files_from, options), output, settings, options, sheet=sheet)

    run_batch(job)


@app.command()
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
        typer.Option("--level", help="shmt: h0, h4 or mix (default mix); classic: h0..h4 (default h2)."),
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
    overwrite: Overwrite = False,
    retry_failed: RetryFailed = False,
    json_out: JsonOut = False,
    quiet: Quiet = False,
    shard: ShardOpt = None,
    files_from: Annotated[
        str | None,
        typer.Option(
            "--files-from",
            metavar="FILE",
            help="Source photos, one per line ('-': stdin); a single positional argument is the references.",
        ),
    ] = None,
    wait_lock: WaitLock = 0.0,
    log: LogFile = None,
) -> None:
    """Put the makeup of each reference onto each source; results keep the source photo's size."""

    from shmt_cli.executors import ExecutorOptions, check_executor_options, engine_by_name, make_executor
    from shmt_cli.pipelines import transfer as tr
    from shmt_cli.pipelines.pairs import check_pair_inputs
    from shmt_cli.pipelines.regions import parse_regions, parse_strengths

    def job() -> tuple[BatchRunner, Summary]:
        options = run_options(overwrite, retry_failed, json_out, quiet, shard, wait_lock, log)
        source_list = [sources] if sources is not None else []
        reference_list = [references] if references is not None else []
        if files_from is not None:
            if files_from == "-" and pairs == "-":
                raise UsageError("--files-from - and --pairs - cannot both read stdin")
            if references is None:  # `--files-from LIST REFS`: the positional argument is the references
                reference_list, source_list = source_list, []
            source_list += all_inputs(None, files_from, options)
            if not source_list:
                raise UsageError(f"--files-from {files_from} lists no source photo")
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
        if not quiet:
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


PLOT_SUFFIXES = (".png", ".jpg", ".jpeg")


def _check_report_path(path: Path, option: str, suffixes: tuple[str, ...]) -> None:
    """Exit with a usage error unless `path` can be written as a report file (missing folders are made)."""
    if suffixes and path.suffix.lower() not in suffixes:
        raise _error_exit(f"{option} {path}: the file name must end in {', '.join(suffixes)}", EXIT_USAGE)
    if path.is_dir():
        raise _error_exit(f"{option} {path}: is a folder, give a file name", EXIT_USAGE)
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise _error_exit(f"{option} {path}: cannot write in {folder}", EXIT_USAGE)


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

    console = make_console()
    for folder in results:
        if not folder.is_dir():
            raise _error_exit(f"{folder}: no such results folder", EXIT_USAGE)
    # Refuse a bad --csv/--plot before the metrics are computed, not with a traceback after.
    if csv_out:
        _check_report_path(csv_out, "--csv", ())
    if plot:
        _check_report_path(plot, "--plot", PLOT_SUFFIXES)
    models = None
    if paper:
        from shmt_cli.checkpoint import CheckpointError
        from shmt_cli.metrics.paper import WeightsNotFoundError

        try:
            models = ev.PaperModels.load(dino_weights, inception_weights, device)
        except (WeightsNotFoundError, CheckpointError) as exc:
            raise _error_exit(str(exc).splitlines()[0], EXIT_USAGE) from None
    evaluations = []
    for folder in results:
        try:
            status = console.status(f"evaluating {escape(str(folder))}") if not quiet else None
            if status:
                status.start()
            try:
                evaluations.append(ev.evaluate_folder(folder, models))
            finally:
                if status:
                    status.stop()
        except UsageError as exc:
            raise _error_exit(str(exc), EXIT_USAGE) from None
    failures = [f for e in evaluations for f in e.failures]
    if not any(e.rows for e in evaluations):
        # Say why each pair could not be evaluated, not just that none could.
        for key, reason in failures:
            console.print(f"[red]failed[/red] {escape(key)}: {escape(reason)}")
        raise _error_exit("no finished pairs to evaluate", 1)
    pairs = ev.shared_pairs(evaluations) if (compare or len(evaluations) > 1) else None
    if pairs is not None and not pairs and len(evaluations) > 1:
        # Every table would be empty: say so instead of printing blank tables and exiting 0.
        for key, reason in failures:
            console.print(f"[red]failed[/red] {escape(key)}: {escape(reason)}")
        names = ", ".join(str(e.folder) for e in evaluations)
        raise _error_exit(f"{names}: no finished pair is in every folder, nothing to compare", 1)
    target = csv_out
    try:
        if csv_out:
            ev.write_csv(csv_out, evaluations)
        target = plot
        if plot:
            ev.box_plot(plot, evaluations, pairs or sorted(evaluations[0].rows))
    except OSError as exc:
        # Name the file asked for, not the temporary file the atomic write failed on.
        raise _error_exit(f"cannot write {target}: {exc.strerror or exc}", EXIT_CANNOT_RUN) from None
    if json_out:
        typer.echo(ev.summary_json_line(evaluations, pairs))
    if not quiet:
        for table in ev.summary_tables(evaluations, pairs):
            console.print(table)
    for key, reason in failures:
        console.print(f"[red]failed[/red] {escape(key)}: {escape(reason)}")
    raise typer.Exit(1 if failures else 0)


@app.command()
def train(
    output: OutDir,
    data: Annotated[
        list[str] | None,
        typer.Argument(help="Folders of photos and/or `shmt decompose` outputs.", show_default=False),
    ] = None,
    init: Annotated[
        Path | None, typer.Option("--init", help="Fine-tune these weights (a weights folder or RUN/weights).")
    ] = None,
    weights_dir: Annotated[
        Path | None, typer.Option("--weights-dir", help="From scratch: the folder with the imported VQ-f4.")
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", help="JSON file of training settings (options override it).")
    ] = None,
    variant: Annotated[str | None, typer.Option("--variant", help="h0 or h4 (default h4).")] = None,
    size: Annotated[str | None, typer.Option("--size", help="From scratch: full or tiny.")] = None,
    batch: Annotated[
        int | None, typer.Option("--batch", help="Samples per process and step (default 1).")
    ] = None,
    grad_accum: Annotated[
        int | None, typer.Option("--grad-accum", help="Micro-batches per optimizer step (default 1).")
    ] = None,
    lr: Annotated[
        float | None,
        typer.Option("--lr", help="Learning rate (default 1e-6 × batch × processes × grad-accum)."),
    ] = None,
    dtype: Annotated[str | None, typer.Option("--dtype", help="fp32 or bf16 (autocast).")] = None,
    seed: Annotated[
        int | None, typer.Option("--seed", help="Seed of data order, augmentation, noise.")
    ] = None,
    steps: Annotated[
        int | None, typer.Option("--steps", help="Train up to this many optimizer steps.")
    ] = None,
    checkpoint_every: Annotated[
        int | None, typer.Option("--checkpoint-every", help="Checkpoint every N steps (and at the end).")
    ] = None,
    validate_every: Annotated[
        int | None, typer.Option("--validate-every", help="Validation loss and sample grid every K steps.")
    ] = None,
    validation_size: Annotated[
        int | None, typer.Option("--validation-size", help="Fixed validation self-pairs (0: none).")
    ] = None,
    keep: Annotated[int | None, typer.Option("--keep", help="Checkpoints to keep (newest).")] = None,
    grid_steps: Annotated[
        int | None, typer.Option("--grid-steps", help="DDIM steps of the sample grids (default 20).")
    ] = None,
    workers: Annotated[int | None, typer.Option("--workers", help="Data loader processes.")] = None,
    device: Annotated[
        str, typer.Option("--device", help="auto, cpu, cuda (torchrun: one GPU each).")
    ] = "auto",
    force_config: Annotated[
        bool, typer.Option("--force-config", help="Continue a run although its settings changed.")
    ] = False,
    plot: Annotated[bool, typer.Option("--plot", help="Write RUN/loss.png at the end.")] = False,
    quiet: Quiet = False,
) -> None:
    """Train SHMT on your photos (self-supervised); the same command on the same RUN/ resumes it."""
    from shmt_cli.engines.shmt.weights import CheckpointError
    from shmt_cli.lock import LockBusy
    from shmt_cli.pipelines.train import TrainRequest, run_train
    from shmt_cli.training.config import ConfigMismatch

    console = make_console()
    request = TrainRequest(
        data=list(data or []),
        run_dir=output,
        init=init,
        weights_dir=weights_dir,
        config_file=config,
        variant=variant,
        size=size,
        batch=batch,
        grad_accum=grad_accum,
        lr=lr,
        dtype=dtype,
        seed=seed,
        steps=steps,
        checkpoint_every=checkpoint_every,
        validate_every=validate_every,
        validation_size=validation_size,
        keep_checkpoints=keep,
        grid_steps=grid_steps,
        workers=workers,
        device=device,
        force_config=force_config,
        plot=plot,
        quiet=quiet,
    )
    try:
        result, failures = run_train(request, console)
    except (ValueError, ConfigMismatch, CheckpointError) as exc:
        raise _error_exit(str(exc).splitlines()[0], EXIT_USAGE) from None
    except (LockBusy, OSError) as exc:
        raise _error_exit(str(exc).splitlines()[0], EXIT_CANNOT_RUN) from None
    if not quiet and int(os.environ.get("RANK", "0")) == 0:
        last = result.last
        loss = f", loss {last['loss']:.5f}" if "loss" in last else ""
        console.print(
            f"trained steps {result.first_step} → {result.last_step}{loss}; "
            f"weights: {escape(str(output / 'weights'))}"
            + (f"; {len(failures)} inputs skipped" if failures else "")
        )
    raise typer.Exit(1 if failures else 0)


weights_app = typer.Typer(
    help="Import, list and verify SHMT weights (nothing is ever downloaded).", no_args_is_help=True
)
app.add_typer(weights_app, name="weights")
WeightsDir = Annotated[
    Path | None,
    typer.Option(
        "--weights-dir", help="Weights folder (default: $SHMT_WEIGHTS, else ./weights of the checkout)."
    ),
]


@weights_app.command("import")
def weights_import(
    checkpoints: Annotated[list[Path], typer.Argument(help="Official SHMT Lightning checkpoints (.ckpt).")],
    vq: Annotated[
        Path | None, typer.Option("--vq", help="Standalone LDM vq-f4 checkpoint (model.ckpt).")
    ] = None,
    weights_dir: WeightsDir = None,
    replace_vq: Annotated[
        bool, typer.Option("--replace-vq", help="Replace an imported VQ that differs.")
    ] = False,
) -> None:
    """Split official checkpoints into verified safetensors files (read with weights_only: no code runs)."""
    from shmt_cli.checkpoint import CheckpointError
    from shmt_cli.engines.shmt.weights import import_checkpoint
    from shmt_cli.engines.shmt.weights import weights_dir as resolve

    folder = resolve(weights_dir)
    console = make_console()
    failed = False
    for checkpoint in checkpoints:
        try:
            report = import_checkpoint(checkpoint, folder, vq, replace_vq=replace_vq)
        except (CheckpointError, OSError) as exc:
            console.print(f"[red]error[/red] {escape(str(checkpoint))}: {escape(str(exc).splitlines()[0])}")
            failed = True
            continue
        files = ", ".join(entry.file for entry in report.entries)
        console.print(
            f"imported {escape(str(checkpoint))}: SHMT-{report.variant} ({report.size}) → {escape(files)} "
            f"in {escape(str(folder))}; {len(report.written)} tensors kept, {len(report.ignored)} ignored"
        )
    raise typer.Exit(1 if failed else 0)


@weights_app.command("export")
def weights_export(
    target: Annotated[Path, typer.Argument(help="Checkpoint file to write (.ckpt).")],
    official: Annotated[
        bool, typer.Option("--official", help="Official Lightning layout (the only format so far).")
    ] = False,
    variant: Annotated[
        str | None, typer.Option("--variant", help="h0 or h4 when the folder has both.")
    ] = None,
    weights_dir: WeightsDir = None,
) -> None:
    """Write weights (imported or trained, e.g. RUN/weights) as an official SHMT checkpoint."""
    from shmt_cli.engines.shmt.export import export_official
    from shmt_cli.engines.shmt.weights import CheckpointError
    from shmt_cli.engines.shmt.weights import weights_dir as resolve

    if not official:
        raise _error_exit(
            "say --official: the official Lightning checkpoint is the only export format", EXIT_USAGE
        )
    folder = resolve(weights_dir)
    try:
        count = export_official(folder, target, variant)
    except (CheckpointError, OSError) as exc:
        raise _error_exit(f"{folder}: {str(exc).splitlines()[0]}", EXIT_CANNOT_RUN) from None
    make_console().print(f"wrote {escape(str(target))}: {count} tensors (official key names)")


@weights_app.command("list")
def weights_list(weights_dir: WeightsDir = None, json_out: JsonOut = False) -> None:
    """Show the imported weights."""
    import json
    from dataclasses import asdict

    from shmt_cli.checkpoint import CheckpointError
    from shmt_cli.engines.shmt.weights import list_weights
    from shmt_cli.engines.shmt.weights import weights_dir as resolve

    folder = resolve(weights_dir)
    try:
        entries = list_weights(folder)
    except CheckpointError as exc:
        raise _error_exit(str(exc), EXIT_USAGE) from None
    if json_out:
        typer.echo(json.dumps([asdict(entry) for entry in entries], indent=2))
        return
    if not entries:
        make_console().print(f"no weights in {escape(str(folder))}; import them with `shmt weights import`")
        return
    for entry in entries:
        variant = f"SHMT-{entry.variant}" if entry.variant else "VQ-f4"
        typer.echo(
            f"{entry.file}\t{variant}\t{entry.size}\t{entry.tensors} tensors\t{entry.bytes / 1e6:.0f} MB\t"
            f"from {entry.source}"
        )


@weights_app.command("verify")
def weights_verify(weights_dir: WeightsDir = None) -> None:
    """Check every imported file against its recorded sha256 and tensor count."""
    from shmt_cli.engines.shmt.weights import verify_weights
    from shmt_cli.engines.shmt.weights import weights_dir as resolve

    folder = resolve(weights_dir)
    results = verify_weights(folder)
    console = make_console()
    if not results:
        console.print(
            f"no weights installed in {escape(str(folder))}; import them with `shmt weights import`"
        )
        raise typer.Exit(1)
    for result in results:
        if result.ok:
            console.print(f"[green]ok[/green] {escape(result.file)}")
        else:
            console.print(f"[red]bad[/red] {escape(result.file)}: {escape('; '.join(result.problems))}")
    raise typer.Exit(0 if all(r.ok for r in results) else 1)


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
        raise _error_exit(f"--expect takes the number of items of the job (>= 0), got {expect}", EXIT_USAGE)

    if not folder.is_dir():
        raise _error_exit(f"not a folder: {folder}", EXIT_USAGE)
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
