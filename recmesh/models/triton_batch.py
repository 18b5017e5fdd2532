"""For Triton python-backend models with dynamic batching: run the model once over every
request of the batch, then answer each request with its own rows - or, if the run fails,
every request with the error (none is left hanging)."""

from __future__ import annotations

from typing import Callable

import numpy as np


def answer_each(pb_utils, model: str, output: str, sizes: list[int], run: Callable[[], np.ndarray]) -> list:
    try:
        rows = run()
    except Exception as exc:
        return [pb_utils.InferenceResponse(error=pb_utils.TritonError(f"{model}: {exc}")) for _ in sizes]
    responses, start = [], 0
    for size in sizes:
        part = np.ascontiguousarray(rows[start : start + size], dtype=np.float32)
        start += size
        responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(output, part)]))
    return responses
