"""recmesh: real-time, LLM-driven recommendations as a gRPC microservice mesh."""

__version__ = "0.1.0"
