"""Triton python backend: TEXT_VECTOR + ITEM_ID -> ITEM_VECTOR in the interest model's space."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from recmesh.models.triton_batch import answer_each

try:  # present only inside Triton; the module stays importable (and testable) without it
    import triton_python_backend_utils as pb_utils
except ImportError:  # pragma: no cover
    pb_utils = None


class TritonPythonModel:
    def initialize(self, args):
        from recmesh.models.interest.served import ServedInterestModel

        config = json.loads(args["model_config"])
        artifact = config["parameters"]["artifact"]["string_value"]
        # Item vectors only (torch): the interest runtime is never used here.
        self.model = ServedInterestModel(Path(args["model_repository"]).parent / artifact, runtime="torch")

    def execute(self, requests):
        vectors, ids = [], []
        for request in requests:
            vectors.append(pb_utils.get_input_tensor_by_name(request, "TEXT_VECTOR").as_numpy().astype(np.float32))
            raw = pb_utils.get_input_tensor_by_name(request, "ITEM_ID").as_numpy().reshape(-1)
            ids.append([i.decode("utf-8", errors="replace") for i in raw])
        def run() -> np.ndarray:
            if any(v.shape[-1] != self.model.text_dim for v in vectors):
                raise ValueError(f"TEXT_VECTOR must have {self.model.text_dim} values")
            return self.model.item_vectors(np.concatenate(vectors), [i for part in ids for i in part])

        return answer_each(pb_utils, "item_encoder", "ITEM_VECTOR", [len(part) for part in ids], run)

    def finalize(self):
        self.model = None
