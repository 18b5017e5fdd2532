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
    assert [i.name for i in interest.input] == ["ITEM_VECTORS", "EVENT_TYPES", "EVENT_VALUES", "TIMESTAMPS_MS",
                                                "QUERY_VECTOR"]
    assert [i.optional for i in interest.input] == [False] * 4 + [True]  # no typed query: not sent
    assert [o.name for o in interest.output] == ["INTEREST"]
    items = parse(MODELS / "item_encoder" / "config.pbtxt")
    assert (MODELS / items.parameters["artifact"].string_value).is_file()


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


def _config(name: str) -> dict:
    from google.protobuf.json_format import MessageToDict

    return MessageToDict(parse(MODELS / name / "config.pbtxt"), preserving_proto_field_name=True)


def load_served(name: str):
    model = load_model(name)
    model.initialize({"model_config": json.dumps(_config(name)), "model_repository": str(MODELS / name),
                      "model_version": "1"})
    return model


def test_interest_and_item_encoders_serve_the_installed_model(pb_utils):
    items = load_served("item_encoder")
    interest = load_served("interest_encoder")
    text = np.random.default_rng(0).normal(size=(3, items.model.text_dim)).astype(np.float32)
    ids = list(items.model.item_index)[:3]
    first, second = items.execute([
        {"TEXT_VECTOR": FakeTensor("", text[:2]), "ITEM_ID": FakeTensor("", np.array([[i.encode()] for i in ids[:2]]))},
        {"TEXT_VECTOR": FakeTensor("", text[2:]), "ITEM_ID": FakeTensor("", np.array([[ids[2].encode()]]))},
    ])
    vectors = np.concatenate([first.output_tensors[0].as_numpy(), second.output_tensors[0].as_numpy()])
    assert np.allclose(vectors, items.model.item_vectors(text, ids), atol=1e-5)

    request = {
        "ITEM_VECTORS": FakeTensor("", vectors),
        "EVENT_TYPES": FakeTensor("", np.array([5, 5, 2], np.int32)),
        "EVENT_VALUES": FakeTensor("", np.array([4.0, 5.0, 0.0], np.float32)),
        "TIMESTAMPS_MS": FakeTensor("", np.array([0, 60_000, 3_600_000], np.int64)),
    }
    empty = {name: FakeTensor("", value.as_numpy()[:0]) for name, value in request.items()}
    answer, no_history = interest.execute([request, empty])
    expected = interest.model.interest(vectors, [5, 5, 2], [4.0, 5.0, 0.0], [0, 60_000, 3_600_000])
    assert np.allclose(answer.output_tensors[0].as_numpy(), expected, atol=1e-5)
    assert no_history.error is None and no_history.output_tensors[0].as_numpy().size == 0


def test_interest_encoder_names_bad_input(pb_utils):
    model = load_served("interest_encoder")
    ok = np.zeros((2, model.model.dim), np.float32)
    base = {"ITEM_VECTORS": FakeTensor("", ok), "EVENT_TYPES": FakeTensor("", np.array([2, 2], np.int32)),
            "EVENT_VALUES": FakeTensor("", np.zeros(2, np.float32)),
            "TIMESTAMPS_MS": FakeTensor("", np.zeros(2, np.int64))}
    bad = [
        {**base, "EVENT_TYPES": FakeTensor("", np.array([2], np.int32))},
        {**base, "ITEM_VECTORS": FakeTensor("", np.zeros((2, 3), np.float32))},
        {**base, "TIMESTAMPS_MS": FakeTensor("", np.zeros(3, np.int64))},
    ]
    errors = [r.error for r in model.execute(bad)]
    assert all(e and e.startswith("interest_encoder:") for e in errors), errors
    assert "ITEM_VECTORS" in errors[1] and "3 timestamps" in errors[2]


def test_interest_encoder_refuses_an_artifact_its_config_does_not_name(pb_utils):
    config = _config("interest_encoder")
    config["parameters"]["version"]["string_value"] = "some-other-version"
    model = load_model("interest_encoder")
    with pytest.raises(ValueError, match="recmesh train"):
        model.initialize({"model_config": json.dumps(config), "model_repository": str(MODELS / "interest_encoder"),
                          "model_version": "1"})
