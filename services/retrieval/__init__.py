"""Retrieval service: candidate search over item vectors in Qdrant."""
