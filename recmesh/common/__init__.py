"""Code every recmesh service shares: config, serving, logging, errors, vectors."""
