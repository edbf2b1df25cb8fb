from matrixinfer.autoscaler.main import main

main()
