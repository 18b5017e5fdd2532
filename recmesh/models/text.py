"""Text -> L2-normalised vectors with a sentence-embedding transformer, in several runtime
variants. The same runners serve in-process and inside Triton's python backend, so both give
the same vectors for the same variant.

Variants (CPU unless noted):
  torch-fp32   the reference
  torch-int8   torch dynamic quantisation of the Linear layers
  onnx-fp32    ONNX Runtime, same maths as the reference (the CPU default)
  onnx-int8    ONNX Runtime with dynamic int8 weights
  torch-fp16   half precision on a GPU (Triton's GPU profile)
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
from pathlib import Path
from typing import Protocol

import numpy as np

log = logging.getLogger("recmesh.encoder.textmodel")

VARIANTS = ("torch-fp32", "torch-int8", "onnx-fp32", "onnx-int8", "torch-fp16")
DEFAULT_CACHE = Path(os.environ.get("RECMESH_MODEL_CACHE", Path.home() / ".cache" / "recmesh"))


class TextModel(Protocol):
    version: str
    dim: int

    def encode(self, texts: list[str]) -> np.ndarray:
        """L2-normalised float32 vectors, one row per text."""
        ...


def _pool(hidden, mask):
    """Mean over real tokens, then L2 norm (sentence-transformers' recipe for MiniLM)."""
    import torch

    mask = mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, p=2, dim=1)


class _Batched:
    """Tokenise and run in batches of at most max_batch texts."""

    dim: int
    version: str

    def __init__(self, model_dir: Path, max_batch: int, max_seq_len: int):
        from transformers import AutoTokenizer

        self._tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
        self._max_batch = max_batch
        self._max_seq_len = max_seq_len

    def tokens(self, texts: list[str], tensors: str):
        return self._tokenizer(texts, padding=True, truncation=True, max_length=self._max_seq_len,
                               return_tensors=tensors)

    def encode(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        parts = [self._run(texts[i : i + self._max_batch]) for i in range(0, len(texts), self._max_batch)]
        return np.concatenate(parts).astype(np.float32, copy=False)

    def _run(self, texts: list[str]) -> np.ndarray:
        raise NotImplementedError


class TorchTextModel(_Batched):
    def __init__(self, model_dir: Path, name: str, threads: int = 1, max_batch: int = 64, max_seq_len: int = 128,
                 int8: bool = False, fp16_device: str | None = None):
        import torch
        from transformers import AutoModel

        super().__init__(model_dir, max_batch, max_seq_len)
        torch.set_num_threads(threads)
        self._torch = torch
        model = AutoModel.from_pretrained(str(model_dir), local_files_only=True).eval()
        self._device = fp16_device
        if int8:
            model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
        if fp16_device:
            model = model.half().to(fp16_device)
        self._model = model
        self.dim = int(model.config.hidden_size)
        self.version = f"{name}/torch-{'int8' if int8 else 'fp16' if fp16_device else 'fp32'}"

    def _run(self, texts: list[str]) -> np.ndarray:
        tokens = self.tokens(texts, "pt")
        if self._device:
            tokens = {k: v.to(self._device) for k, v in tokens.items()}
        with self._torch.inference_mode():
            hidden = self._model(**tokens).last_hidden_state
            return _pool(hidden.float(), tokens["attention_mask"]).cpu().numpy()


class OnnxTextModel(_Batched):
    def __init__(self, onnx_path: Path, model_dir: Path, name: str, threads: int = 1, max_batch: int = 64,
                 max_seq_len: int = 128, label: str = "onnx-fp32"):
        import json

        import onnxruntime as ort

        super().__init__(model_dir, max_batch, max_seq_len)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        self._inputs = {i.name for i in self._session.get_inputs()}
        self.dim = int(json.loads((model_dir / "config.json").read_text())["hidden_size"])
        self.version = f"{name}/{label}"

    def _run(self, texts: list[str]) -> np.ndarray:
        tokens = self.tokens(texts, "np")
        feed = {k: v.astype(np.int64) for k, v in tokens.items() if k in self._inputs}
        return self._session.run(None, feed)[0]


@functools.lru_cache(maxsize=32)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    """sha256 of a whole file (memoised per size and modification time: ~0.2 s for MiniLM's 87 MiB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def model_key(model_dir: Path) -> str:
    """What a model folder's vectors depend on: its config and ALL of its weights (a
    LoRA-merged model often differs from its base only past the first MiB of the file), 12 hex
    characters. FileNotFoundError when the folder has no config.json."""
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir}: not a Hugging Face model folder (no config.json)")
    digest = hashlib.sha256()
    for name in ("config.json", "model.safetensors", "pytorch_model.bin"):
        path = model_dir / name
        if path.is_file():
            stat = path.stat()
            digest.update(path.name.encode())
            digest.update(_file_digest(str(path.resolve()), stat.st_size, stat.st_mtime_ns).encode())
    return digest.hexdigest()[:12]


def export_onnx(model_dir: Path, out_path: Path) -> Path:
    """Export encoder + pooling + norm to one ONNX graph (eager attention: SDPA's masking does
    not trace with dynamic shapes and silently gives wrong vectors)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    class Pooled(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids):
            hidden = self.model(input_ids=input_ids, attention_mask=attention_mask,
                                token_type_ids=token_type_ids).last_hidden_state
            return _pool(hidden, attention_mask)

    model = AutoModel.from_pretrained(str(model_dir), local_files_only=True, attn_implementation="eager").eval()
    sample = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)(
        ["a sample", "another, longer sample text"], padding=True, return_tensors="pt"
    )
    names = ["input_ids", "attention_mask", "token_type_ids"]
    axes = {n: {0: "batch", 1: "tokens"} for n in names} | {"embedding": {0: "batch"}}
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_suffix(f".{os.getpid()}.tmp")  # concurrent exporters never share a temp file
    torch.onnx.export(Pooled(model), tuple(sample[n] for n in names), str(tmp), input_names=names,
                      output_names=["embedding"], dynamic_axes=axes, opset_version=17, dynamo=False)
    tmp.rename(out_path)
    return out_path


def onnx_file(model_dir: Path, int8: bool, cache_dir: Path = DEFAULT_CACHE) -> Path:
    """The cached ONNX export of model_dir (exported on first use, about 10 s)."""
    fp32 = cache_dir / f"text-{model_key(model_dir)}-fp32.onnx"
    if not fp32.is_file():
        log.info("exporting ONNX", extra={"path": str(fp32)})
        export_onnx(model_dir, fp32)
    if not int8:
        return fp32
    q8 = fp32.with_name(fp32.name.replace("-fp32", "-int8"))
    if not q8.is_file():
        from onnxruntime.quantization import QuantType, quantize_dynamic

        tmp = q8.with_suffix(f".{os.getpid()}.tmp")
        quantize_dynamic(str(fp32), str(tmp), weight_type=QuantType.QInt8)
        tmp.rename(q8)
    return q8


def load_text_model(variant: str, model_dir: Path, name: str, threads: int = 1, max_batch: int = 64,
                    max_seq_len: int = 128, cache_dir: Path = DEFAULT_CACHE) -> TextModel:
    if variant not in VARIANTS:
        raise ValueError(f"unknown text model variant {variant!r}; one of {VARIANTS}")
    runtime, precision = variant.split("-")
    if runtime == "onnx":
        path = onnx_file(model_dir, precision == "int8", cache_dir)
        model: TextModel = OnnxTextModel(path, model_dir, name, threads, max_batch, max_seq_len, label=variant)
    else:
        model = TorchTextModel(model_dir, name, threads, max_batch, max_seq_len, int8=precision == "int8",
                               fp16_device="cuda" if precision == "fp16" else None)
    log.info("text model loaded", extra={"variant": variant, "dim": model.dim, "threads": threads})
    return model


def encode_with_progress(model: TextModel, texts: list[str], batch: int = 64, desc: str = "encoding") -> np.ndarray:
    """Encode a long list in batches with a progress bar (catalog builds)."""
    from tqdm import tqdm

    # Similar lengths share a batch, so little compute goes to padding.
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = np.zeros((len(texts), model.dim), dtype=np.float32)
    with tqdm(total=len(texts), desc=desc, unit="text") as bar:
        for start in range(0, len(order), batch):
            rows = order[start : start + batch]
            out[rows] = model.encode([texts[i] for i in rows])
            bar.update(len(rows))
    return out
