"""The Triton model repository, checked without Triton: configs parse as Triton's ModelConfig,
and model.py answers one response per request with the right rows."""

from __future__ import annotations

import importlib.util
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

REPO = Path(__file__).resolve().parents[2]
MODELS = REPO / "deploy" / "triton" / "models"


def parse(path: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def test_cpu_configs():
    text = parse(MODELS / "text_encoder" / "config.pbtxt")
    assert text.backend == "python" and text.max_batch_size >= 32
    assert text.dynamic_batching.max_queue_delay_microseconds <= 2000
    assert text.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    assert text.parameters["variant"].string_value == "onnx-fp32"
    interest = parse(MODELS / "interest_encoder" / "config.pbtxt")
    assert [i.name for i in interest.input] == ["ITEM_VECTORS", "EVENT_TYPES", "EVENT_VALUES", "QUERY_VECTOR"]
    assert interest.input[3].optional


def test_gpu_profile_differs_only_where_it_should():
    cpu = parse(MODELS / "text_encoder" / "config.pbtxt")
    gpu = parse(REPO / "deploy" / "triton" / "gpu" / "text_encoder.config.pbtxt")
    assert gpu.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    assert gpu.parameters["variant"].string_value == "torch-fp16"
    assert (gpu.name, list(gpu.input), list(gpu.output)) == (cpu.name, list(cpu.input), list(cpu.output))


class FakeTensor:
    def __init__(self, name, array):
        self.name, self._array = name, array

    def as_numpy(self):
        return self._array


class FakeResponse:
    def __init__(self, output_tensors=None, error=None):
        self.output_tensors, self.error = output_tensors or [], error


@pytest.fixture
def pb_utils(monkeypatch):
    fake = types.SimpleNamespace(
        Tensor=FakeTensor,
        InferenceResponse=FakeResponse,
        TritonError=lambda message: message,
        get_input_tensor_by_name=lambda request, name: request.get(name),
    )
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", fake)
    return fake


def load_model(name: str):
    spec = importlib.util.spec_from_file_location(f"triton_{name}", MODELS / name / "1" / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.TritonPythonModel()


class EchoModel:
    dim = 2

    def encode(self, texts):
        return np.array([[len(t), 1.0] for t in texts], dtype=np.float32)


def test_text_encoder_answers_each_request_with_its_rows(pb_utils):
    model = load_model("text_encoder")
    model.model = EchoModel()
    requests = [{"TEXT": FakeTensor("TEXT", np.array([[b"ab"], [b"abcd"]], dtype=object))},
                {"TEXT": FakeTensor("TEXT", np.array([[b"x"]], dtype=object))}]
    first, second = model.execute(requests)
    assert first.output_tensors[0].as_numpy()[:, 0].tolist() == [2, 4]
    assert second.output_tensors[0].as_numpy()[:, 0].tolist() == [1]


def test_text_encoder_failure_is_an_error_per_request(pb_utils):
    model = load_model("text_encoder")
    model.model = types.SimpleNamespace(encode=lambda texts: (_ for _ in ()).throw(RuntimeError("boom")))
    responses = model.execute([{"TEXT": FakeTensor("TEXT", np.array([[b"a"]], dtype=object))}] * 2)
    assert [r.error for r in responses] == ["text_encoder: boom"] * 2


def test_interest_encoder_rule_and_bad_input(pb_utils):
    model = load_model("interest_encoder")
    params = {"query_weight": {"string_value": "0.6"}, "recency_half_life_events": {"string_value": "2"}}
    model.initialize({"model_config": json.dumps({"parameters": params})})
    vectors = np.eye(3, dtype=np.float32)[:2]
    ok = model.execute([{
        "ITEM_VECTORS": FakeTensor("", vectors),
        "EVENT_TYPES": FakeTensor("", np.array([2, 2], np.int32)),
        "EVENT_VALUES": FakeTensor("", np.zeros(2, np.float32)),
    }])[0]
    interest = ok.output_tensors[0].as_numpy()
    assert np.isclose(np.linalg.norm(interest), 1) and interest[1] > interest[0]  # newest counts most
    bad = model.execute([{
        "ITEM_VECTORS": FakeTensor("", vectors),
        "EVENT_TYPES": FakeTensor("", np.array([2], np.int32)),
        "EVENT_VALUES": FakeTensor("", np.zeros(2, np.float32)),
    }])[0]
    assert bad.error.startswith("interest_encoder:")
