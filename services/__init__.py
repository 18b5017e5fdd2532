"""recmesh services: one package per process. They share only the recmesh library (models,
index and event stores, common) and talk only through recmesh.v1 protos: no service imports
another (tests/unit/test_boundaries.py)."""

import os

# One BLAS/OpenMP thread per service process, set before numpy or torch load: on a small host
# multi-threaded BLAS spins its idle threads and steals the cores from every other process
# (measured at 40 Recommend/s: the ranker's CPU 9.6 s -> 1.1 s for the same work). The models
# that need threads say so explicitly (RECMESH_ENCODER_THREADS, Triton's instance config).
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
