"""`python -m rmeeto_export ...` (and `torchrun -m rmeeto_export retrain ...`) run the CLI."""

from rmeeto_export.cli import main

main()
