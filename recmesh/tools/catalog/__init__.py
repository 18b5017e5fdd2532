"""Catalog and interaction data: loaders and the one-command bootstrap."""
