"""Ranker service: scores candidates with a versioned model over ranking features."""
