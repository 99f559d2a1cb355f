"""QWEN35_MLX_DISABLE_KERNELS: a kernel switched off is never launched, its caller takes the MLX-ops path with
the same result, and a misspelt name is an error, not a silently ignored setting."""

import os
import subprocess
import sys

import mlx.core as mx
import numpy as np
import pytest

from helpers import assert_rel_close
from qwen35_mlx.kernels import _metal, gdn_kernels, norm
from test_gdn_decode import make_layer


def test_disabled_kernels_are_not_launched(metal_on_cpu, monkeypatch, launched):
    layer = make_layer(2, 4, 32, 48, mx.float32)
    x = mx.array(np.random.default_rng(5).standard_normal((1, 40, 64)).astype(np.float32))
    w = mx.array(1 + 0.1 * np.random.default_rng(6).standard_normal(64).astype(np.float32))
    out, conv, state = layer.mix(x, None, None)
    y = norm.rms_norm(x, w, 1e-6)
    assert {"gdn_conv", "gdn_chunk_prep", "gdn_chunk_scan", "rms_norm"} <= launched

    launched.clear()
    monkeypatch.setattr(_metal, "DISABLED", frozenset({"gdn_conv", "gdn_chunk_prep", "rms_norm"}))
    out2, conv2, state2 = layer.mix(x, None, None)
    y2 = norm.rms_norm(x, w, 1e-6)
    assert not launched, f"disabled kernels launched: {launched}"
    assert_rel_close(out2, out, 2e-5, "layer output, MLX ops")
    assert_rel_close(state2, state, 2e-5, "state, MLX ops")
    np.testing.assert_array_equal(np.array(conv2), np.array(conv))
    assert_rel_close(y2, y, 1e-6, "rms_norm, MLX ops")


def test_disabled_decode_kernel(metal_on_cpu, monkeypatch, launched):
    monkeypatch.setattr(_metal, "DISABLED", frozenset({"gdn_decode", "gdn_step"}))
    assert gdn_kernels.decode_backend(128, 4) is None
    layer = make_layer(2, 4, 32, 48, mx.float32)
    rng = np.random.default_rng(2)
    f = lambda *s: mx.array(rng.standard_normal(s).astype(np.float32))
    layer.mix(f(1, 1, 64), f(1, 3, 2 * 64 + 192), 0.1 * f(1, 4, 48, 32))
    assert "gdn_decode" not in launched and "gdn_step" not in launched


def test_unknown_name_is_an_error():
    env = {**os.environ, "QWEN35_MLX_DISABLE_KERNELS": "rms_norm,gdn_scan"}
    r = subprocess.run([sys.executable, "-c", "import qwen35_mlx.kernels._metal"], env=env, capture_output=True,
                       text=True)
    assert r.returncode != 0
    assert "unknown kernel(s) ['gdn_scan']" in r.stderr and "gdn_chunk_scan" in r.stderr


@pytest.mark.parametrize("value", ["", " , ", "rms_norm, gdn_conv"])
def test_setting_is_parsed(monkeypatch, value):
    monkeypatch.setenv("QWEN35_MLX_DISABLE_KERNELS", value)
    assert _metal._disabled() == {n.strip() for n in value.split(",") if n.strip()}
