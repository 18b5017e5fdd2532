"""Tooling over the mesh: the `recmesh` CLI, the catalog bootstrap, the local stack, evaluation,
benchmarks and load/chaos harnesses. Tools may import the library and a service's typed
settings (services.<name>.config), nothing else of a service: they reach the services over gRPC."""
