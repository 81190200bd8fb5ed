"""Batch pipelines behind the subcommands: inputs in, files out, through the shared batch runner."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from shmt_cli.inputs import UsageError, display_path


def refuse_output_as_input(out_dir: Path, inputs: Iterable[str]) -> None:
    """UsageError when the output folder is one of the input folders.

    The output folder is left out when inputs are searched, but not when it *is* the folder given:
    every run would then take the previous run's outputs as new inputs (and multiply them).
    """
    out = os.path.realpath(out_dir)
    for given in inputs:
        if given and os.path.isdir(given) and os.path.realpath(given) == out:
            raise UsageError(
                f"the output folder {display_path(out_dir)} is also an input folder: choose another -o"
            )
