"""numpy <-> recmesh.v1.Matrix (float32, little-endian, row-major)."""

from __future__ import annotations

import numpy as np

from recmesh.common.errors import InvalidArgument
from recmesh.v1 import common_pb2

_F32 = np.dtype("<f4")


def to_matrix(array: np.ndarray | None) -> common_pb2.Matrix:
    if array is None or array.size == 0:
        return common_pb2.Matrix(rows=0, dim=0)
    arr = np.ascontiguousarray(np.atleast_2d(array), dtype=_F32)
    return common_pb2.Matrix(rows=arr.shape[0], dim=arr.shape[1], data=arr.tobytes())


def from_matrix(matrix: common_pb2.Matrix, field: str = "matrix") -> np.ndarray:
    """Decode and check a Matrix; a malformed one is the caller's INVALID_ARGUMENT."""
    rows, dim = matrix.rows, matrix.dim
    if rows < 0 or dim < 0:
        raise InvalidArgument(field, "rows and dim must be >= 0")
    if rows == 0:
        return np.zeros((0, max(dim, 0)), dtype=np.float32)
    if len(matrix.data) != rows * dim * 4:
        raise InvalidArgument(field, f"data has {len(matrix.data)} bytes, expected rows*dim*4 = {rows * dim * 4}")
    arr = np.frombuffer(matrix.data, dtype=_F32).reshape(rows, dim)
    if not np.isfinite(arr).all():
        raise InvalidArgument(field, "contains NaN or Inf")
    return arr


def first_row(matrix: common_pb2.Matrix, field: str) -> np.ndarray | None:
    """The first row of a checked Matrix; None when it has none."""
    arr = from_matrix(matrix, field)
    return arr[0] if len(arr) else None


def optional_row(matrix: common_pb2.Matrix, field: str, dim: int) -> np.ndarray | None:
    """A Matrix that is one vector of `dim` values, or empty (None); anything else is the
    caller's INVALID_ARGUMENT."""
    arr = from_matrix(matrix, field)
    if arr.shape[0] == 0:
        return None
    if arr.shape != (1, dim):
        raise InvalidArgument(field, f"expected 1 x {dim}, got {arr.shape[0]} x {arr.shape[1]}")
    return arr[0]


def l2_normalize(array: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(array, axis=-1, keepdims=True)
    return array / np.maximum(norms, 1e-12)
