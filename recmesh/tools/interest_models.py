"""The interest models a var serves for experiments' variants (`recmesh interest-models`): the
default (the var's own, installed by `recmesh train`, else the shipped one - its item tower
encodes the catalog) and up to MAX_INTEREST_VARIANTS further ones under
$RECMESH_VAR/models/served/interest_variants/<version>/interest_model.pt. A further one must share
the default's item space (served.item_space: the same text projection, ID table and item ids),
else its interests would be scored against a catalog another model placed; `add` refuses it.
Triton serves them as interest_encoder's version folders 2, 3, ... (recmesh/tools/tritonserver.py),
the in-process encoder loads them too; both read the folder at start, each leaving out (and
logging) one that no longer loads whole or answers finitely (served.servable_variants)."""

from __future__ import annotations

import shutil
from pathlib import Path

from recmesh.common.paths import MAX_INTEREST_VARIANTS, interest_variant_artifacts, served_artifact, var_paths


def listing(var: Path | None = None, default: Path | None = None) -> list[dict]:
    """[{"version", "default", "item_space", "catalog_compatible", "path"}], the default first
    (default: the var's served model, served_artifact)."""
    from recmesh.models.interest.served import artifact_identity

    default = served_artifact(var) if default is None else Path(default)
    rows = []
    for path in (default, *interest_variant_artifacts(var_paths(var).interest_variants)):
        version, space = artifact_identity(path)
        rows.append({"version": version, "default": path == default, "item_space": space, "path": str(path)})
    for row in rows:
        row["catalog_compatible"] = row["item_space"] == rows[0]["item_space"]
    return rows


def add(artifact: Path, name: str | None = None, var: Path | None = None, default: Path | None = None) -> Path:
    """Installs `artifact` (an interest model file, e.g. var/models/<run>/<version>/interest_model.pt)
    as a further interest model of `var` under `name` (default: its own version). default: the
    interest model the var is served with (default: served_artifact(var)). ValueError when the
    name is malformed or served already, when MAX_INTEREST_VARIANTS are there, or when the
    artifact was trained for another item space than the default's. Returns the installed file."""
    from recmesh.common.errors import InvalidArgument
    from recmesh.models.interest.served import check_servable, copy_as_version
    from recmesh.models.ranking.scorer import check_version_name

    artifact = Path(artifact)
    if not artifact.is_file():
        raise ValueError(f"{artifact}: no interest model there")
    version, space = check_servable(artifact)  # loads whole and answers finitely, or ValueError
    name = name or version
    try:
        check_version_name(name, "name")
    except InvalidArgument as exc:
        raise ValueError(str(exc)) from None
    served = listing(var, default)
    if name in {row["version"] for row in served}:
        raise ValueError(f"an interest model named {name!r} is served already")
    if len(served) - 1 >= MAX_INTEREST_VARIANTS:
        raise ValueError(f"{MAX_INTEREST_VARIANTS} further interest models are served already; remove one first")
    if space != served[0]["item_space"]:
        raise ValueError(f"{artifact} was trained for item space {space}; the catalog's (the default model "
                         f"{served[0]['version']}'s) is {served[0]['item_space']}: its interests cannot be scored "
                         "against this catalog")
    dest = var_paths(var).interest_variants / name / served_artifact(var).name
    copy_as_version(artifact, dest, name)
    return dest


def remove(name: str, var: Path | None = None) -> None:
    """Removes the further interest model `name`; ValueError when there is none by that name."""
    folder = var_paths(var).interest_variants / name
    if name in ("", ".", "..") or "/" in name or not folder.is_dir():
        raise ValueError(f"no further interest model {name!r} in {folder.parent}")
    shutil.rmtree(folder)
