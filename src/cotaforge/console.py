"""What every command group shares: the stderr console and the one way a command fails (exit status 2)."""

from __future__ import annotations

import typer
from rich.console import Console

console = Console(stderr=True)


def fail(exc: Exception) -> None:
    """Print the error and exit with status 2: the command could not run."""
    console.print(f"[bold red]error:[/] {exc}", markup=True, highlight=False)
    raise typer.Exit(code=2)
