"""Vector columns as numpy, shared by search, the index gate, dedup and the encoders' numpy paths. Torch-free, so an
interactive search that embeds its query with onnxruntime never imports torch."""
from __future__ import annotations

import numpy as np
import pyarrow as pa


def vector_matrix(column) -> np.ndarray:
    """float32 [n, d] of a fixed-size-list column (an Array or a ChunkedArray; n may be 0), built from its flat
    values without a Python object per row. `flatten()`, not `.values`: a sliced array's `.values` starts at the
    buffer's start, not the slice's."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    flat = column.flatten().to_numpy(zero_copy_only=False)
    return flat.reshape(len(column), column.type.list_size).astype(np.float32, copy=False)


def unit_rows_np(rows: np.ndarray) -> np.ndarray:
    """[n, d] rows → float32 rows of L2 norm 1 (an all-zero row stays zero)."""
    rows = rows.astype(np.float32, copy=False)
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
