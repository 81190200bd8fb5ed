"""`shmt weights ...`: import, export, list and verify SHMT weights (nothing is ever downloaded)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from shmt_cli.batch import EXIT_CANNOT_RUN, EXIT_USAGE, make_console
from shmt_cli.cli_batch import JsonOut, error_exit

weights_app = typer.Typer(
    help="Import, list and verify SHMT weights (nothing is ever downloaded).", no_args_is_help=True
)
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
        raise error_exit(
            "say --official: the official Lightning checkpoint is the only export format", EXIT_USAGE
        )
    folder = resolve(weights_dir)
    try:
        count = export_official(folder, target, variant)
    except (CheckpointError, OSError) as exc:
        raise error_exit(f"{folder}: {str(exc).splitlines()[0]}", EXIT_CANNOT_RUN) from None
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
        raise error_exit(str(exc), EXIT_USAGE) from None
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
