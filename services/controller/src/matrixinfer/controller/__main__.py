"""``python -m matrixinfer.controller`` runs the controller."""

from matrixinfer.controller.main import main

main()
