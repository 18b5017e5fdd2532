"""The learned interest model: the causal transformer (sequence_model) and the artifact the mesh
serves (served).

SERVED_ARTIFACT lives here, not in served.py, so that naming it (the encoder's settings, the
CLI's defaults) does not import torch."""

from recmesh.common.local import REPO

# Where `recmesh train` installs the served interest model: Triton's interest_encoder version folder.
SERVED_ARTIFACT = REPO / "deploy" / "triton" / "models" / "interest_encoder" / "1" / "interest_model.pt"
