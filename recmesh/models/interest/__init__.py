"""The learned interest model: the causal transformer (sequence_model, with its optional query
fusion and cold-start vector), the synthesised typed queries it is trained with (query_fusion)
and the artifact the mesh serves (served).

Which artifact is served is decided in recmesh/common/paths.py (`served_artifact`: the var's own,
installed by `recmesh train`, else the shipped one); named here too so that naming it (the
encoder's settings, the CLI's defaults) does not import torch."""

from recmesh.common.paths import SHIPPED_ARTIFACT, served_artifact

__all__ = ["SHIPPED_ARTIFACT", "served_artifact"]
