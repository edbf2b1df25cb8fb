"""``python -m matrixinfer.cli`` runs the command line."""

from matrixinfer.cli.main import main

main()
