"""``python -m matrixinfer.registry`` runs the registry."""

from matrixinfer.registry.main import main

main()
