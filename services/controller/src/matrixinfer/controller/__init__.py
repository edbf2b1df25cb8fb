"""MatrixInfer controller: reconciles ModelInfer into Triton replicas.

Built in the controller issue; the package exists so the layout and its import
contracts are in place from the start.
"""
