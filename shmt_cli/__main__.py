"""`python -m shmt_cli ...` (and `torchrun ... -m shmt_cli train ...`) run the `shmt` command line."""

from shmt_cli.cli import app

app()
