"""``python -m matrixinfer.gateway`` runs the gateway."""

from matrixinfer.gateway.main import main

main()
