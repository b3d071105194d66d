"""Where the `drip` commands print: `console` (stdout; 160 columns when it is not a
terminal, so wide reports survive pipes and files) and `err` (stderr)."""

from __future__ import annotations

import sys

from rich.console import Console

console = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True)
