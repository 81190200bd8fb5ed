"""`shmt train`: parses the training options into a `TrainRequest`, runs it, prints the outcome."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from shmt_cli.batch import EXIT_CANNOT_RUN, EXIT_USAGE, make_console
from shmt_cli.cli_batch import OutDir, Quiet, error_exit


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
        raise error_exit(str(exc).splitlines()[0], EXIT_USAGE) from None
    except (LockBusy, OSError) as exc:
        raise error_exit(str(exc).splitlines()[0], EXIT_CANNOT_RUN) from None
    if not quiet and int(os.environ.get("RANK", "0")) == 0:
        last = result.last
        loss = f", loss {last['loss']:.5f}" if "loss" in last else ""
        console.print(
            f"trained steps {result.first_step} → {result.last_step}{loss}; "
            f"weights: {escape(str(output / 'weights'))}"
            + (f"; {len(failures)} inputs skipped" if failures else "")
        )
    raise typer.Exit(1 if failures else 0)
