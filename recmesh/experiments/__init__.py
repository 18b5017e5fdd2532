"""Experiments: variants of what the mesh serves, assigned by user, measured online."""
