"""Versioned scoring models. A version is a JSON spec; loading one never mutates another.

Two kinds, one scorer: "linear" (the wide part only) and "wide_deep" (the wide part plus a
one-hidden-layer ReLU network over the same features, as in Wide & Deep). The wide part's
per-feature contributions explain a score; the deep part learns what a sum cannot. Inference
is numpy: 500 candidates score in microseconds, no framework in the serving path."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from recmesh.common.errors import InvalidArgument
from recmesh.common.paths import var_paths
from recmesh.models.ranking.features import FEATURES

# The versions that ship with recmesh (package data, chosen for the bundled MovieLens catalog
# and the shipped interest model): the start of a var without its own (start_params_dir).
SHIPPED_PARAMS = Path(__file__).resolve().parent / "params"


def start_params_dir(var: Path | None = None) -> Path:
    """The ranker versions a var's mesh starts from - the ranker serves the newest there until
    the updater streams another, and the updater's learner starts from it: the blend `recmesh
    train` chose on this var's own validation split for the interest model it installed
    ($RECMESH_VAR/models/served/params) when that folder holds a version, else the shipped ones.
    One function decides (as recmesh.common.paths.served_artifact does for the interest model)."""
    own = var_paths(var).own_params
    return own if own.is_dir() and any(own.glob("*.json")) else SHIPPED_PARAMS


@dataclass(frozen=True)
class DeepPart:
    w1: np.ndarray  # len(FEATURES) x hidden
    b1: np.ndarray  # hidden
    v: np.ndarray  # hidden

    def hidden(self, features: np.ndarray) -> np.ndarray:
        return np.maximum(features @ self.w1 + self.b1, 0.0)

    def score(self, features: np.ndarray) -> np.ndarray:
        return self.hidden(features) @ self.v


@dataclass(frozen=True)
class Scorer:
    version: str
    weights: np.ndarray  # len(FEATURES): the wide part
    bias: float = 0.0
    deep: DeepPart | None = None
    # Newest feedback (updater arrival time, ms) the version learned from; 0 for shipped ones.
    trained_through_ms: int = 0
    # len(FEATURES): the wide weights for a typed query without history (no session, no recent
    # items, no category affinity: a newcomer's typed words), chosen on the var's own cold
    # typed-query scenario (recmesh.tools.eval.cold_queries); None: scored like any other.
    cold: np.ndarray | None = None

    def for_request(self, has_history: bool, typed: bool) -> "Scorer":
        """The scorer a request is scored with: typed words without history, and cold weights
        here: those alone (linear, bias kept; the deep part learned on users with history is
        left out); else this one."""
        if has_history or not typed or self.cold is None:
            return self
        return Scorer(self.version, self.cold, self.bias, None, self.trained_through_ms)

    def contributions(self, features: np.ndarray) -> np.ndarray:
        """n x len(FEATURES): what each feature adds to each candidate's score (wide part)."""
        return features * self.weights

    def score(self, features: np.ndarray) -> np.ndarray:
        scores = features @ self.weights + self.bias
        if self.deep is not None:
            scores = scores + self.deep.score(features)
        return scores

    def to_spec(self, **extra) -> dict:
        spec = {"version": self.version, "kind": "linear" if self.deep is None else "wide_deep",
                "bias": self.bias, "weights": dict(zip(FEATURES, self.weights.tolist(), strict=True)),
                "trained_through_ms": self.trained_through_ms}
        if self.deep is not None:
            spec["deep"] = {"w1": self.deep.w1.tolist(), "b1": self.deep.b1.tolist(), "v": self.deep.v.tolist()}
        if self.cold is not None:
            spec["cold_weights"] = dict(zip(FEATURES, self.cold.tolist(), strict=True))
        return spec | extra


def _feature_weights(value: object, origin: str, field: str) -> np.ndarray:
    """A spec's {feature: weight} object as a len(FEATURES) vector (a feature left out: 0).
    ValueError naming the origin and field: not an object, an unknown feature, a weight that is
    not a finite JSON number (a string, a boolean, null, NaN or Inf)."""
    if not isinstance(value, dict):
        raise ValueError(f"{origin}: {field} must be an object of feature: weight, got {type(value).__name__}")
    unknown = set(value) - set(FEATURES)
    if unknown:
        raise ValueError(f"{origin}: unknown features in {field} {sorted(map(str, unknown))}")
    for name, weight in value.items():
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not np.isfinite(weight):
            raise ValueError(f"{origin}: {field}.{name} must be a finite number, got {weight!r}")
    return np.array([float(value.get(name, 0.0)) for name in FEATURES], dtype=np.float32)


def scorer_from_spec(spec: dict, origin: str = "spec") -> Scorer:
    kind = spec.get("kind")
    if kind not in ("linear", "wide_deep"):
        raise ValueError(f"{origin}: unsupported ranker kind {kind!r}")
    vector = _feature_weights(spec.get("weights"), origin, "weights")
    deep = None
    if kind == "wide_deep":
        d = spec["deep"]
        deep = DeepPart(*(np.asarray(d[key], np.float32) for key in ("w1", "b1", "v")))
        if deep.w1.shape != (len(FEATURES), len(deep.b1)) or deep.v.shape != deep.b1.shape:
            raise ValueError(f"{origin}: deep part shapes {deep.w1.shape}, {deep.b1.shape}, {deep.v.shape} disagree")
    cold = None
    if "cold_weights" in spec:
        cold = _feature_weights(spec["cold_weights"], origin, "cold_weights")
        if not cold.any():  # all zero would score every cold candidate alike: a spec's mistake, not a choice
            raise ValueError(f"{origin}: cold_weights weights no feature")
    return Scorer(spec["version"], vector, float(spec.get("bias", 0.0)), deep, int(spec.get("trained_through_ms", 0)),
                  cold)


def load_params(path: Path) -> Scorer:
    return scorer_from_spec(json.loads(path.read_text()), str(path))


def save_params(scorer: Scorer, params_dir: Path, **extra) -> Path:
    """<params_dir>/<version>.json, written whole or not at all (rename is atomic)."""
    params_dir.mkdir(parents=True, exist_ok=True)
    path = params_dir / f"{scorer.version}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(scorer.to_spec(**extra), indent=1))
    os.replace(tmp, path)
    return path


# A version's name: its file's name in a params folder, so never a path.
VERSION_CHARS = 128
VERSION = re.compile(rf"[A-Za-z0-9_-][A-Za-z0-9_.-]{{0,{VERSION_CHARS - 1}}}")


def check_version_name(version: str, field: str) -> str:
    """A parameter version's name (1..128 of [A-Za-z0-9_.-], not starting with a dot), else
    InvalidArgument naming field."""
    if not VERSION.fullmatch(version):
        raise InvalidArgument(field, f"a parameter version is 1..128 of [A-Za-z0-9_.-], not starting with '.'; "
                                     f"got {version[:140]!r}")
    return version


def find_params(version: str, *folders: Path) -> Path | None:
    """<folder>/<version>.json of the first folder that has it; None: none has. version must
    have passed check_version_name."""
    for folder in folders:
        path = folder / f"{version}.json"
        if path.is_file():
            return path
    return None


def newest_params(params_dir: Path) -> Path:
    files = sorted(params_dir.glob("*.json"))
    if not files:
        raise FileNotFoundError(f"no ranker parameter files (*.json) in {params_dir}")
    return files[-1]
