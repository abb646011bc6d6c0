"""``python -m keyplane`` runs the CLI (imported with the collector paused: keyplane.heap)."""

from keyplane.heap import cli_main

cli_main()
