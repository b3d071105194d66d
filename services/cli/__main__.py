"""`python -m services.cli`: the drip command."""

from services.cli import app

app()
