"""Ranking: features per candidate, versioned scorers (linear, wide & deep) and their shipped
parameters, reasons, diversity and exploration, and the training the updater runs online."""
