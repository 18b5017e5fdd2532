"""A var with its own fine-tuned text model (a tiny run of recmesh.models.text_tuning on the
bundled MiniLM, installed as `recmesh train` installs it): the tritonserver binary's
text_encoder serves that model (onnx-fp32 over the var's folder) - the query vectors it gives are
the in-process tuned model's, not the bundled model's."""

from __future__ import annotations

import json

import numpy as np
import pytest

from recmesh.common.paths import SHIPPED_ARTIFACT, bundled_text_model, var_paths
from recmesh.models.text import load_text_model
from recmesh.models.text_tuning import Pair, TuneConfig, save_merged, train_adapter
from recmesh.tools.eval.release import install_text_model
from recmesh.tools.tritonserver import TritonServer

pytestmark = pytest.mark.integration

VERSION = "20990101T000000Z"
ITEMS = ["Star Wars (1977). Action, Adventure, Sci-Fi. space opera", "Heat (1995). Action, Crime, Thriller. heist",
         "Saving Private Ryan (1998). Action, Drama, War. world war ii", "Toy Story (1995). Animation, Children"]
QUERIES = ["space opera", "heist movie", "world war II drama", "dark psychological thriller", "ok"]


def triton_encode(url: str, texts: list[str]) -> tuple[np.ndarray, dict]:
    """text_encoder's vectors of texts, and its config's parameters."""
    import tritonclient.grpc as triton

    client = triton.InferenceServerClient(url)
    text = triton.InferInput("TEXT", [len(texts), 1], "BYTES")
    text.set_data_from_numpy(np.array([[t.encode()] for t in texts], dtype=object))
    try:
        config = client.get_model_config("text_encoder", as_json=True)["config"]
        return client.infer("text_encoder", [text]).as_numpy("EMBEDDING"), config["parameters"]
    finally:
        client.close()


def test_triton_serves_the_vars_tuned_text_model(tmp_path, monkeypatch):
    var = tmp_path / "shop"
    monkeypatch.setenv("RECMESH_VAR", str(var))
    pairs = [Pair("label", q, i) for q, i in (("space opera", 0), ("heist", 1), ("war", 2), ("pixar", 3))] * 3
    config = TuneConfig(batch_size=4, max_epochs=1, lr=1e-2, warmup_steps=1, max_seq_len=32, time_cap_s=60)
    trained = train_adapter(bundled_text_model(), ITEMS, pairs, config, progress=False)
    folder = save_merged(trained, bundled_text_model(), var_paths(var).models / "text" / VERSION)
    (folder / "report.json").write_text(json.dumps({"version": VERSION, "base_model": "all-MiniLM-L6-v2"}))
    target = install_text_model(folder, var_paths(var).own_text_model)

    with TritonServer(var_paths(var).triton, interest_model=SHIPPED_ARTIFACT, models=("text_encoder",)) as triton:
        served, parameters = triton_encode(triton.grpc_url, QUERIES)

    assert parameters["model_name"]["string_value"] == f"all-MiniLM-L6-v2-tuned-{VERSION}"
    assert parameters["model_dir"]["string_value"] == str(target.absolute())
    tuned = load_text_model("onnx-fp32", target, "tuned").encode(QUERIES)
    np.testing.assert_allclose(served, tuned, atol=1e-5)
    frozen = load_text_model("onnx-fp32", bundled_text_model(), "frozen").encode(QUERIES)
    assert np.abs(served - frozen).max() > 1e-3  # the tuned model, not the bundled one
