"""The one seam where text becomes vectors. In-process torch today; Triton plugs in here."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol

import numpy as np

log = logging.getLogger("recmesh.encoder.textmodel")


class TextModel(Protocol):
    version: str
    dim: int

    def encode(self, texts: list[str]) -> np.ndarray:
        """L2-normalised float32 vectors, one row per text."""
        ...


class TorchTextModel:
    """A sentence-embedding transformer (mean pooling + L2 norm), run with torch on CPU."""

    def __init__(
        self, model_dir: Path, name: str, threads: int = 1, max_batch: int = 64, max_seq_len: int = 128
    ):
        import torch
        from transformers import AutoModel, AutoTokenizer

        torch.set_num_threads(threads)
        self._torch = torch
        self._tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
        self._model = AutoModel.from_pretrained(str(model_dir), local_files_only=True).eval()
        self._max_batch = max_batch
        self._max_seq_len = max_seq_len
        self.dim = int(self._model.config.hidden_size)
        self.version = f"{name}/torch-fp32"
        log.info("text model loaded", extra={"model_dir": str(model_dir), "dim": self.dim, "threads": threads})

    def encode(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        out = [self._encode_batch(texts[i : i + self._max_batch]) for i in range(0, len(texts), self._max_batch)]
        return np.concatenate(out, axis=0)

    def _encode_batch(self, texts: list[str]) -> np.ndarray:
        torch = self._torch
        tokens = self._tokenizer(
            texts, padding=True, truncation=True, max_length=self._max_seq_len, return_tensors="pt"
        )
        with torch.inference_mode():
            hidden = self._model(**tokens).last_hidden_state
            mask = tokens["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
        return pooled.numpy().astype(np.float32, copy=False)


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

