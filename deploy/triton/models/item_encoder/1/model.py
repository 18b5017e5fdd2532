"""Triton python backend: TEXT_VECTOR + ITEM_ID -> ITEM_VECTOR in the interest model's space."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

try:  # present only inside Triton; the module stays importable (and testable) without it
    import triton_python_backend_utils as pb_utils
except ImportError:  # pragma: no cover
    pb_utils = None


class TritonPythonModel:
    def initialize(self, args):
        from services.encoder.learned import ServedInterestModel

        config = json.loads(args["model_config"])
        artifact = config["parameters"]["artifact"]["string_value"]
        self.model = ServedInterestModel(Path(args["model_repository"]).parent / artifact)

    def execute(self, requests):
        vectors, ids = [], []
        for request in requests:
            vectors.append(pb_utils.get_input_tensor_by_name(request, "TEXT_VECTOR").as_numpy().astype(np.float32))
            raw = pb_utils.get_input_tensor_by_name(request, "ITEM_ID").as_numpy().reshape(-1)
            ids.append([i.decode("utf-8", errors="replace") for i in raw])
        try:
            if any(v.shape[-1] != self.model.text_dim for v in vectors):
                raise ValueError(f"TEXT_VECTOR must have {self.model.text_dim} values")
            out = self.model.item_vectors(np.concatenate(vectors), [i for part in ids for i in part])
        except Exception as exc:  # answer every request with the error, never hang them
            return [pb_utils.InferenceResponse(error=pb_utils.TritonError(f"item_encoder: {exc}")) for _ in requests]
        responses, start = [], 0
        for part in ids:
            chunk = np.ascontiguousarray(out[start : start + len(part)], dtype=np.float32)
            start += len(part)
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("ITEM_VECTOR", chunk)]))
        return responses

    def finalize(self):
        self.model = None
