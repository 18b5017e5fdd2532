"""recmesh services: one package per process, talking only through recmesh.v1 protos."""
