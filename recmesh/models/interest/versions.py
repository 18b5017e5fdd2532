"""Which interest model each of Triton's interest_encoder version folders serves: the config's
"versions" parameter, "1=NAME:SPACE;2=NAME:SPACE" (NAME the artifact's version, SPACE its item
space: served.item_space), written when the repository is assembled (recmesh/tools/tritonserver.py),
checked by the model at load (deploy/triton/models/interest_encoder/1/model.py) and read by the
encoder (services/encoder/backends.py). No heavy imports: the encoder reads it without torch."""

from __future__ import annotations


def format_versions(versions: dict[int, tuple[str, str]]) -> str:
    """{folder number: (artifact version, item space)} as the parameter's value."""
    return ";".join(f"{n}={name}:{space}" for n, (name, space) in sorted(versions.items()))


def parse_versions(value: str, default_version: str) -> dict[int, tuple[str, str | None]]:
    """The parameter's value as {folder number: (artifact version, item space)}; empty (a
    repository not assembled: the checked-in one): folder 1 only, named default_version, its
    item space unknown (None). ValueError naming the parameter for a malformed value."""
    if not value.strip():
        return {1: (default_version, None)}
    versions: dict[int, tuple[str, str | None]] = {}
    for part in value.split(";"):
        try:
            number, rest = part.split("=", 1)
            name, space = rest.rsplit(":", 1)
            versions[int(number)] = (name, space)
        except ValueError:
            raise ValueError(f"interest_encoder parameter versions: {part!r} is not NUMBER=NAME:SPACE") from None
    if 1 not in versions:
        raise ValueError("interest_encoder parameter versions: no folder 1 (the default)")
    return versions
