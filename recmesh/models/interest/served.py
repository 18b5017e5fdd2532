"""The learned interest model as the mesh serves it.

One artifact (the var's own, $RECMESH_VAR/models/served/interest_model.pt, installed by
`recmesh train`, else the shipped deploy/triton/models/interest_encoder/1/interest_model.pt:
recmesh/common/paths.py's `served_artifact`) serves three callers the same way:
  - the catalog bootstrap turns every item's LLM text vector into its catalog vector (the
    model's item table row: projection of the text vector + the item's ID embedding);
  - Triton's item_encoder does the same for items upserted live (new items: text only);
  - Triton's interest_encoder runs the causal transformer over the catalog vectors of the
    user's recent items (with event strength and time gaps).
Interest and item vectors live in the model's space and are scored by dot product, exactly
as in training, so the served path reproduces the offline metric. A typed query is matched in
the language model's own space (retrieval's text source, the ranker's query_sim); a model
trained with query fusion (ModelConfig.query_dim > 0) also takes the query's language-model
vector into the interest (h + query_proj(q)) and answers for an empty history (its learned cold
vector). An artifact without fusion ignores the query and answers nothing for an empty history,
as before."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from recmesh.models.interest import served_artifact
from recmesh.models.interest.sequence_model import (
    ModelConfig,
    SequenceInterestModel,
    encode_sequences,
)
from recmesh.models.text import DEFAULT_CACHE
from recmesh.v1 import common_pb2

log = logging.getLogger("recmesh.encoder.learned")
# onnx: ONNX Runtime over the exported transformer (same vectors, ~4x less CPU per history
# than torch's per-op dispatch on a model this small); torch: the reference.
RUNTIMES = ("onnx", "torch")

ET = common_pb2.EventType
# The model learned from ratings; other events enter as the rating they most resemble.
EVENT_AS_RATING = {
    ET.EVENT_TYPE_VIEW: 3.0,
    ET.EVENT_TYPE_CLICK: 3.5,
    ET.EVENT_TYPE_ADD_TO_CART: 4.0,
    ET.EVENT_TYPE_PURCHASE: 4.5,
}
UNRATED = 3.5  # a RATE event without a value


def event_ratings(event_types, values) -> list[float]:
    return [
        (float(v) if v > 0 else UNRATED) if t == ET.EVENT_TYPE_RATE else EVENT_AS_RATING.get(t, UNRATED)
        for t, v in zip(event_types, values, strict=True)
    ]


def export_served(model: SequenceInterestModel, item_ids: list[str], holdout_users: list[str], version: str,
                  path: Path) -> None:
    """Weights without the frozen text table (the catalog holds the item vectors), plus what
    the ID rows mean and who was held out; the Triton config beside it is stamped with the
    version (Triton reports it, and the model refuses to load a mismatch)."""
    state = {k: v for k, v in model.state_dict().items() if k != "text"}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"config": asdict(model.config), "state": state, "item_ids": list(item_ids),
                "holdout_users": list(holdout_users), "version": version}, path)
    config = path.parent.parent / "config.pbtxt"
    if config.is_file():
        stamp_version(config, version)


def artifact_version(path: Path) -> str:
    """The version `recmesh train` gave the artifact (what the Triton config must name)."""
    return str(torch.load(path, map_location="cpu", weights_only=True)["version"])


def item_space(config: ModelConfig, state: dict, item_ids: list[str]) -> str:
    """The catalog space an artifact's interests are scored in: a digest (16 hex) of its item
    tower - the text projection, the ID table when it has one, the ids its rows mean, and the
    dims. Two artifacts with the same item_space place every item at the same catalog vector, so
    one's interest may be scored against a catalog the other encoded; any other pair may not."""
    digest = hashlib.sha256(f"{config.d}/{config.text_dim}/{config.use_ids}".encode())
    tower = ("text_proj.", "ids.") if config.use_ids else ("text_proj.",)
    for key in sorted(k for k in state if k.startswith(tower)):
        digest.update(key.encode())
        digest.update(state[key].detach().cpu().contiguous().to(torch.float32).numpy().tobytes())
    digest.update("\n".join(item_ids).encode())
    return digest.hexdigest()[:16]


def artifact_identity(path: Path) -> tuple[str, str]:
    """(version, item_space) of the artifact at `path`."""
    blob = torch.load(path, map_location="cpu", weights_only=True)
    return str(blob["version"]), item_space(ModelConfig(**blob["config"]), blob["state"], list(blob["item_ids"]))


def copy_as_version(source: Path, dest: Path, version: str) -> None:
    """`source`'s artifact saved at `dest` under another version name (the same weights): how an
    operator names a second interest model for experiments (`recmesh interest-models add`)."""
    blob = torch.load(source, map_location="cpu", weights_only=True)
    blob["version"] = version
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(f".{os.getpid()}.tmp")
    torch.save(blob, tmp)
    tmp.rename(dest)


def stamp_version(config: Path, version: str) -> None:
    pattern = r'(key: "version", value: \{ string_value: )"[^"]*"'
    stamped, n = re.subn(pattern, rf'\1"{version}"', config.read_text())
    if n != 1:
        raise ValueError(f"{config}: no version parameter to stamp")
    config.write_text(stamped)


class _LastHiddenState(torch.nn.Module):
    def __init__(self, model: SequenceInterestModel):
        super().__init__()
        self.model = model

    def forward(self, vectors, padding, strength, gaps):
        return self.model.forward_vectors(vectors, padding, strength, gaps)[:, -1]


def interest_onnx_file(model: SequenceInterestModel, artifact: Path, cache_dir: Path = DEFAULT_CACHE) -> Path:
    """The cached ONNX export of the artifact's transformer (exported on first use, ~1 s). One
    history of exactly max_len positions, left-padded: the tracer bakes the sequence length
    into attention's reshapes, and padding is what the model was trained with."""
    key = hashlib.sha256(Path(artifact).read_bytes()).hexdigest()[:12]
    path = cache_dir / f"interest-{key}.onnx"
    if path.is_file():
        return path
    log.info("exporting ONNX", extra={"path": str(path)})
    n, d = model.config.max_len, model.config.d
    sample = (torch.zeros(1, n, d), torch.arange(n)[None] < n // 2, torch.ones(1, n, dtype=torch.long),
              torch.zeros(1, n, dtype=torch.long))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")  # concurrent exporters never share a temp file
    with warnings.catch_warnings():  # the shape-dependent branches it warns of are fixed by the fixed shape
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(_LastHiddenState(model).eval(), sample, str(tmp), opset_version=17, dynamo=False,
                          input_names=["vectors", "padding", "strength", "gaps"], output_names=["interest"])
    tmp.rename(path)
    return path


def check_servable(path: Path) -> tuple[str, str]:
    """(version, item_space) of the interest model at `path` once it has loaded whole (every
    weight of its configuration, strict) and answered a short history, an empty one and a typed
    query (when it fuses queries) with finite interests. ValueError naming the file otherwise:
    not a model file, truncated, missing or misshapen weights, NaN or Inf out. What an operator's
    `recmesh interest-models add` and every start check before serving a further model - one
    broken file must not take the default model down with it."""
    try:
        model = ServedInterestModel(path, runtime="torch")
        history = model.item_vectors(np.zeros((3, model.text_dim), np.float32), ["", "", ""])
        history = history + np.linspace(0.1, 0.3, history.size, dtype=np.float32).reshape(history.shape)
        kinds, at = [common_pb2.EVENT_TYPE_VIEW] * 3, [60_000, 120_000, 180_000]
        outs = [model.interest(history, kinds, [0.0] * 3, at)]
        if model.fuses_queries:
            query = np.full(model.query_dim, 1.0 / np.sqrt(model.query_dim), np.float32)
            outs += [model.interest(history[:0], [], [], []), model.interest(history, kinds, [0.0] * 3, at, query)]
    except (ValueError, FileNotFoundError) as exc:
        raise ValueError(f"{path}: not a servable interest model: {exc}") from None
    except Exception as exc:  # torch.load and load_state_dict raise many kinds for a bad file
        said = " ".join(str(exc).split())  # torch's messages run over several lines
        raise ValueError(f"{path}: not a servable interest model: {type(exc).__name__}: {said[:300]}") from None
    if not all(out is not None and np.all(np.isfinite(out)) for out in outs):
        raise ValueError(f"{path}: not a servable interest model: its interests are not finite (NaN or Inf weights?)")
    return model.name, model.item_space


def servable_variants(paths: list[Path]) -> dict[Path, tuple[str, str]]:
    """The further interest models among `paths` that pass check_servable, in order, each with
    its (version, item_space) from that check; the others are left out with an error in the log
    (the default model and the working variants still serve)."""
    kept = {}
    for path in paths:
        try:
            kept[path] = check_servable(path)
        except ValueError as exc:
            log.error("interest model variant left out", extra={"reason": str(exc)})
    return kept


class ServedInterestModel:
    def __init__(self, path: Path | None = None, threads: int = 1, runtime: str = "onnx",
                 cache_dir: Path = DEFAULT_CACHE):
        path = served_artifact() if path is None else path  # the var's own, else the shipped one
        if runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
        if not Path(path).is_file():
            raise FileNotFoundError(f"no interest model at {path}: run `recmesh train`")
        blob = torch.load(path, map_location="cpu", weights_only=True)
        self.config = ModelConfig(**blob["config"])
        if not self.config.text_dim:
            raise ValueError(f"{path}: an ID-only model cannot encode new items; serve a text model")
        self.model = SequenceInterestModel(self.config, None)
        self.model.load_state_dict(blob["state"])
        self.model.eval()
        self.version = f"llm-seq/{blob['version']}"
        self.name = str(blob["version"])  # what an experiment's variant names it by
        self.item_space = item_space(self.config, blob["state"], list(blob["item_ids"]))
        self.dim = self.config.d
        self.text_dim = self.config.text_dim
        self.query_dim = self.config.query_dim  # 0: no query fusion, no cold-start interest
        self.item_index = {item: i for i, item in enumerate(blob["item_ids"])}
        self.holdout_users: list[str] = list(blob["holdout_users"])
        torch.set_num_threads(threads)
        # torch modules are not re-entrant across threads for the same module on every build.
        self._lock = threading.Lock()
        self.runtime = runtime
        self._session = None
        if runtime == "onnx":
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = options.inter_op_num_threads = threads
            self._session = ort.InferenceSession(str(interest_onnx_file(self.model, path, cache_dir)), options,
                                                 providers=["CPUExecutionProvider"])

    @torch.no_grad()
    def item_vectors(self, text_vectors: np.ndarray, item_ids: list[str]) -> np.ndarray:
        """Catalog vectors: the projected text vector, plus the ID embedding for items the model
        was trained on (new items still work from their text)."""
        with self._lock:
            out = self.model.text_proj(torch.as_tensor(np.asarray(text_vectors, np.float32)))
            if self.config.use_ids:
                rows = torch.tensor([self.item_index.get(i, -1) + 1 for i in item_ids])  # 0: unknown
                out = out + self.model.ids.weight[rows] * (rows > 0).unsqueeze(1)
        return out.numpy()

    @property
    def fuses_queries(self) -> bool:
        """Whether the interest takes the typed query and answers for an empty history."""
        return bool(self.query_dim)

    @torch.no_grad()
    def interest(self, item_vectors: np.ndarray, event_types, values, timestamps_ms,
                 query: np.ndarray | None = None) -> np.ndarray | None:
        """The interest vector (d,), scored against the catalog vectors by dot product as in
        training: the transformer's output at the newest event. With query fusion: the cold
        vector for an empty history, + query_proj(query) when query (the typed query's
        language-model vector, query_dim) is given. Without fusion the query is not read and an
        empty history gives None. ValueError naming `query` for a vector of another dim."""
        if self.query_dim and query is not None:
            query = np.asarray(query, np.float32).reshape(-1)
            if query.shape[0] != self.query_dim:
                raise ValueError(f"query: dim {query.shape[0]}, the interest model's query_dim is {self.query_dim}")
        if len(item_vectors) == 0:
            if not self.query_dim:
                return None
            h = self.model.cold.detach().numpy().copy()
        else:
            h = self._hidden(item_vectors, event_types, values, timestamps_ms)
        if self.query_dim and query is not None:
            with self._lock:
                h = h + self.model.query_proj(torch.from_numpy(query)[None])[0].numpy()
        return h

    def _hidden(self, item_vectors: np.ndarray, event_types, values, timestamps_ms) -> np.ndarray:
        n = min(len(item_vectors), self.config.max_len)
        ratings = event_ratings(list(event_types)[-n:], list(values)[-n:])
        seconds = (np.asarray(timestamps_ms, np.int64)[-n:] // 1000).tolist()
        if self._session is not None:
            length = self.config.max_len
            _, strength, gaps = encode_sequences([list(range(n))], [ratings], [seconds], length)
            vectors = np.zeros((1, length, self.dim), np.float32)
            vectors[0, length - n:] = item_vectors[-n:]
            padding = np.arange(length)[None] < length - n
            return self._session.run(None, {"vectors": vectors, "padding": padding, "strength": strength.numpy(),
                                            "gaps": gaps.numpy()})[0][0]
        _, strength, gaps = encode_sequences([list(range(n))], [ratings], [seconds], n)
        vectors = torch.as_tensor(np.asarray(item_vectors[-n:], np.float32))[None]
        with self._lock:
            h = self.model.forward_vectors(vectors, torch.zeros((1, n), dtype=torch.bool), strength, gaps)[0, -1]
        return h.numpy()
