"""Test helpers: the one error metric, the graph-node count, and the `transformers` reference on the tiny
checkpoints."""

import collections
import json
import re
import tempfile
from pathlib import Path

import numpy as np


def assert_rel_close(out, ref, tol, name):
    out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    assert np.isfinite(out).all(), f"{name}: non-finite values"
    err = np.linalg.norm(out - ref) / max(np.linalg.norm(ref), 1e-30)
    assert err < tol, f"{name}: relative error {err:.2e} >= {tol:.0e}"


def graph_nodes(*outs) -> collections.Counter:
    """Primitive nodes in the graph behind `outs`, by name (from MLX's DOT export). Each one costs host time on
    every decode token (graph building, then evaluation), views included (benchmarks/bench_host.py counts them)."""
    import mlx.core as mx

    with tempfile.NamedTemporaryFile(suffix=".dot") as f:
        mx.export_to_dot(f.name, *outs)
        return collections.Counter(re.findall(r'\[label ="([^"]*)", shape=rectangle', Path(f.name).read_text()))


def load_hf(path):
    """The `transformers` reference for a tiny checkpoint: float32, eager attention, eval mode."""
    import torch
    import transformers

    torch.set_num_threads(min(2, torch.get_num_threads()))
    arch = json.loads((Path(path) / "config.json").read_text())["architectures"][0]
    model = getattr(transformers, arch).from_pretrained(path, dtype=torch.float32, attn_implementation="eager")
    return model.eval()


def _torch(x, integer=False):
    """list / NumPy / MLX array -> torch tensor (int64 ids, float32 values); torch passes through."""
    import torch

    if isinstance(x, torch.Tensor):
        return x
    a = np.asarray(x)
    if integer or a.dtype.kind in "iub":
        return torch.from_numpy(a.astype(np.int64))
    return torch.from_numpy(a.astype(np.float32))


def _ids(input_ids):
    ids = _torch(input_ids, integer=True)
    return ids[None] if ids.ndim == 1 else ids


def hf_logits(model, input_ids, **kwargs) -> np.ndarray:
    """Float32 logits [B, T, vocab]. kwargs (pixel_values, image_grid_thw, mm_token_type_ids, ...)
    go to model.forward, converted to torch."""
    import torch

    kwargs = {k: _torch(v) for k, v in kwargs.items()}
    with torch.no_grad():
        return model(input_ids=_ids(input_ids), **kwargs).logits.float().numpy()


def hf_greedy(model, input_ids, n, **kwargs) -> np.ndarray:
    """The next n argmax tokens [B, n], decoded with the KV/GDN cache. EOS does not stop it."""
    import torch

    ids = _ids(input_ids)
    kwargs = {k: _torch(v) for k, v in kwargs.items()}
    kwargs.setdefault("attention_mask", torch.ones_like(ids))  # else pad-id tokens get masked
    with torch.no_grad():
        out = model.generate(input_ids=ids, max_new_tokens=n, min_new_tokens=0, do_sample=False,
                             eos_token_id=None, temperature=None, top_k=None, top_p=None, **kwargs)
    return out[:, ids.shape[1]:].numpy()
