"""Batch pipelines behind the subcommands: inputs in, files out, through the shared batch runner."""
