"""Triton python backend for the learned interest model (recmesh/models/interest/served.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

try:  # present only inside Triton; the module stays importable (and testable) without it
    import triton_python_backend_utils as pb_utils
except ImportError:  # pragma: no cover
    pb_utils = None


def _param(config: dict, key: str) -> str:
    return config["parameters"][key]["string_value"]


def _input(request, name: str) -> np.ndarray | None:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()


def _vector(value: np.ndarray | None) -> np.ndarray:
    """None travels as an empty vector."""
    return np.ascontiguousarray(np.zeros(0) if value is None else value, dtype=np.float32)


class TritonPythonModel:
    def initialize(self, args):
        from recmesh.models.interest.served import ServedInterestModel
        from recmesh.models.interest.versions import parse_versions

        config = json.loads(args["model_config"])
        folder = Path(args["model_repository"]) / args["model_version"]
        self.model = ServedInterestModel(folder / _param(config, "artifact"))
        # This folder's entry in "versions" (folder 1 only, named by "version", when it is empty).
        versions = parse_versions(config["parameters"].get("versions", {}).get("string_value", ""),
                                  _param(config, "version"))
        name, space = versions.get(int(args["model_version"]), (None, None))
        if self.model.name != name:
            raise ValueError(f"interest_encoder version {args['model_version']}: artifact is {self.model.version}, "
                             f"config.pbtxt names {name}: reinstall with `recmesh train`")
        if space is not None and self.model.item_space != space:
            raise ValueError(f"interest_encoder version {args['model_version']}: artifact's item space is "
                             f"{self.model.item_space}, config.pbtxt names {space}")

    def execute(self, requests):
        return [self._one(request) for request in requests]

    def _one(self, request):
        try:
            vectors = _input(request, "ITEM_VECTORS").astype(np.float32)
            types, values, stamps = (_input(request, n) for n in ("EVENT_TYPES", "EVENT_VALUES", "TIMESTAMPS_MS"))
            if not len(vectors) == len(types) == len(values) == len(stamps):
                raise ValueError(f"{len(vectors)} vectors, {len(types)} types, {len(values)} values, "
                                 f"{len(stamps)} timestamps")
            if len(vectors) and vectors.shape[1] != self.model.dim:
                raise ValueError(f"ITEM_VECTORS: dim {vectors.shape[1]}, the model's is {self.model.dim}")
            query = _input(request, "QUERY_VECTOR")  # optional: None or empty = no typed query
            if query is not None and query.size == 0:
                query = None
            if query is not None and query.shape[-1] != self.model.text_dim:
                raise ValueError(f"QUERY_VECTOR: dim {query.shape[-1]}, the language model's is {self.model.text_dim}")
            interest = self.model.interest(vectors, types.tolist(), values.tolist(), stamps, query)
            return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("INTEREST", _vector(interest))])
        except Exception as exc:
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(f"interest_encoder: {exc}"))

    def finalize(self):
        self.model = None
