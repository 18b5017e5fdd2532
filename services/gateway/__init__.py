"""Gateway: the public recmesh.v1.Recommendations API; deadlines and graceful degradation."""
