"""gdn_chunked (the chunk-wise path, the prefill wherever no kernel runs) against float64, on both of its
routes: NumPy (the CPU's) and MLX ops (the GPU fallback for shapes the kernels do not take).

Small head dims keep it fast on the CPU; the head layouts are the checkpoints' (16/16 and 16/32).
"""

import mlx.core as mx
import numpy as np
import pytest

from helpers import assert_rel_close
from qwen35_mlx.kernels import gdn
from test_gdn import make_inputs, ref_np

TOL = 2e-5        # float32: measured 1e-7 .. 1.1e-6 (y and state, T up to 1000)
TOL_BF16 = 2e-2   # bf16 outputs: 1.7e-3, the rounding of y itself

CASES = {  # (B, T, Hk, Hv, Dk, Dv, initial state)
    "T1-h16/16": (1, 1, 16, 16, 32, 16, True),
    "T63-h16/32": (1, 63, 16, 32, 32, 16, True),
    "T64-h16/16-nostate": (1, 64, 16, 16, 16, 32, False),
    "T65-h16/32": (1, 65, 16, 32, 32, 16, True),
    "T1000-h16/32": (1, 1000, 16, 32, 16, 24, True),
    "T1000-h16/16-nostate-b2": (2, 1000, 16, 16, 24, 16, False),
}


ROUTES = pytest.mark.parametrize("numpy", [True, False], ids=["numpy", "mlx"])


@ROUTES
@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_chunked_matches_float64(case, numpy):
    B, T, Hk, Hv, Dk, Dv, st = CASES[case]
    args = make_inputs(B, T, Hk, Hv, Dk, Dv, seed=T + Hv, state=st)
    y, s = gdn.gdn_chunked(*args, numpy=numpy)
    ry, rs = ref_np(*args)
    assert_rel_close(y, ry, TOL, f"{case} y")
    assert_rel_close(s, rs, TOL, f"{case} state")


@ROUTES
@pytest.mark.parametrize("chunk", [16, 32, 64])
def test_chunked_other_chunk_sizes(chunk, numpy):
    args = make_inputs(1, 100, 2, 4, 32, 48, seed=chunk)
    y, s = gdn.gdn_chunked(*args, chunk=chunk, numpy=numpy)
    ry, rs = ref_np(*args)
    assert_rel_close(y, ry, TOL, "y")
    assert_rel_close(s, rs, TOL, "state")


@ROUTES
def test_chunked_segments_and_bf16(numpy):
    """Several segments (the state carried between them), bf16 inputs, bf16 outputs."""
    args = make_inputs(1, 300, 2, 4, 32, 48, mx.bfloat16, seed=5)
    y, s = gdn.gdn_chunked(*args, segment=128, numpy=numpy)
    ry, rs = ref_np(*args)
    assert y.dtype == mx.bfloat16 and s.dtype == mx.float32
    assert_rel_close(y.astype(mx.float32), ry, TOL_BF16, "y")
    assert_rel_close(s, rs, TOL, "state")


def test_gated_delta_chunked_with_padding():
    """Left padding (mask) and right padding (lengths) on the chunked path: padded steps leave the state
    untouched and output zero."""
    B, T = 2, 90
    args = make_inputs(B, T, 2, 4, 32, 16, seed=6)
    mask = np.ones((B, T), bool)
    mask[1, :20] = False
    lengths = [70, T]
    m = mask & (np.arange(T)[None] < np.array(lengths)[:, None])
    y, s = gdn.gated_delta(*args, mask=mx.array(mask), lengths=lengths, impl="chunked")
    ry, rs = ref_np(*args, mask=m)
    assert_rel_close(y, ry, TOL, "y")
    assert_rel_close(s, rs, TOL, "state")
    assert not np.asarray(y)[0, 70:].any() and not np.asarray(y)[1, :20].any()
