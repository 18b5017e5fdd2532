"""Versioned scoring models. A version is a JSON file; loading one never mutates another."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from services.ranker.features import FEATURES


@dataclass(frozen=True)
class LinearScorer:
    version: str
    weights: np.ndarray  # len(FEATURES)
    bias: float

    def contributions(self, features: np.ndarray) -> np.ndarray:
        """n x len(FEATURES): what each feature adds to each candidate's score."""
        return features * self.weights

    def score(self, features: np.ndarray) -> np.ndarray:
        return features @ self.weights + self.bias


def load_params(path: Path) -> LinearScorer:
    spec = json.loads(path.read_text())
    if spec.get("kind") != "linear":
        raise ValueError(f"{path}: unsupported ranker kind {spec.get('kind')!r}")
    weights = spec["weights"]
    unknown = set(weights) - set(FEATURES)
    if unknown:
        raise ValueError(f"{path}: unknown features {sorted(unknown)}")
    vector = np.array([float(weights.get(name, 0.0)) for name in FEATURES], dtype=np.float32)
    return LinearScorer(spec["version"], vector, float(spec.get("bias", 0.0)))


def newest_params(params_dir: Path) -> Path:
    files = sorted(params_dir.glob("*.json"))
    if not files:
        raise FileNotFoundError(f"no ranker parameter files (*.json) in {params_dir}")
    return files[-1]
