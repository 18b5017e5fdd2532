"""Triton python backend for the interest model (zero-shot rule for now)."""

from __future__ import annotations

import json

import numpy as np

try:  # present only inside Triton
    import triton_python_backend_utils as pb_utils
except ImportError:  # pragma: no cover
    pb_utils = None


class TritonPythonModel:
    def initialize(self, args):
        from services.encoder.interest import InterestRule

        params = json.loads(args["model_config"]).get("parameters", {})
        self.rule = InterestRule(
            query_weight=float(params["query_weight"]["string_value"]),
            recency_half_life_events=float(params["recency_half_life_events"]["string_value"]),
        )

    def execute(self, requests):
        return [self._one(request) for request in requests]

    def _one(self, request):
        try:
            vectors = pb_utils.get_input_tensor_by_name(request, "ITEM_VECTORS").as_numpy().astype(np.float32)
            types = pb_utils.get_input_tensor_by_name(request, "EVENT_TYPES").as_numpy().tolist()
            values = pb_utils.get_input_tensor_by_name(request, "EVENT_VALUES").as_numpy().tolist()
            query = pb_utils.get_input_tensor_by_name(request, "QUERY_VECTOR")
            query_vec = query.as_numpy().astype(np.float32) if query is not None else None
            if len(vectors) != len(types) or len(types) != len(values):
                raise ValueError(f"{len(vectors)} vectors, {len(types)} types, {len(values)} values")
            interest = self.rule.combine(vectors, types, values, query_vec)
            if interest is None:
                interest = np.zeros(vectors.shape[1] if vectors.ndim == 2 else 0, dtype=np.float32)
            out = pb_utils.Tensor("INTEREST", np.ascontiguousarray(interest, dtype=np.float32))
            return pb_utils.InferenceResponse(output_tensors=[out])
        except Exception as exc:
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(f"interest_encoder: {exc}"))

    def finalize(self):
        self.rule = None
