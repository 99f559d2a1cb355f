"""Kernel sources in metal/, built once per backend: Metal through mx.fast.metal_kernel, CUDA through
mx.fast.cuda_kernel. Both compile the same body; the header is the backend's half of the portability layer
(portable_<backend>.h, plus tiles_<backend>.h and tiles.h for kernels that multiply tiles), and a short prologue
binds the thread indices the body uses (tid, lane, sg, tgid) and, on CUDA, Metal's address-space words (in the
body: defined before CUDA's own headers they would break `__device__`, which expands to `__location__(device)`).

MLX builds and hashes a custom kernel's whole source on every launch (CUDA: CustomKernel::eval_gpu), and decode
is bound by per-launch host cost: so each backend gets only its own half, and comments and indentation are
stripped (newlines kept, so compiler messages keep their line numbers)."""

from __future__ import annotations

import importlib.resources
import os
import re
import struct
from functools import lru_cache
from pathlib import Path

import mlx.core as mx

_REPO_METAL = Path(__file__).resolve().parents[2] / "metal"

PROLOGUE = {
    "metal": (
        "const uint tid = thread_position_in_threadgroup.x;\n"
        "const uint lane = thread_index_in_simdgroup;\n"
        "const uint sg = simdgroup_index_in_threadgroup;\n"
        "const uint3 tgid = threadgroup_position_in_grid;\n"
    ),
    "cuda": (
        "#define threadgroup __shared__\n"
        "#define device\n"
        "#define thread\n"
        "#define constant\n"
        "const uint tid = threadIdx.x;\n"
        "const uint lane = tid & 31u;\n"
        "const uint sg = tid >> 5;\n"
        "const uint3 tgid = blockIdx;\n"
    ),
}

# name -> (input names, output names); scalars travel in `meta` (int32, made by ints), read as meta[i] on both
# backends, or, where they are fixed for a model (a norm's eps, attention's scale), as template constants
# (float_bits)
KERNELS = {
    "gdn_chunk_prep": (("q", "k", "v", "g", "beta", "meta"), ("W", "U", "Aqk", "Gc")),
    "gdn_chunk_scan": (("q", "k", "W", "U", "Aqk", "Gc", "state_in", "meta"), ("y", "state_out")),
    "gdn_step": (("q", "k", "v", "g", "beta", "state_in", "meta"), ("y", "state_out", "states")),
    "gdn_decode": (("proj", "conv_in", "conv_w", "A_log", "dt_bias", "state_in"), ("y", "conv_out", "state_out")),
    "gdn_conv": (("qkv", "conv_in", "conv_w", "a_in", "b_in", "A_log", "dt_bias", "meta"),
                 ("q", "k", "v", "g", "beta", "conv_out")),
    "rms_norm": (("x", "h", "z", "w", "meta"), ("y", "res")),
    "norm_gemv": (("x", "h", "nw", "W"), ("y", "res")),
    "attn_qk": (("proj", "qw", "kw", "inv_freq", "pos"), ("q", "k", "v")),
    "attn_flash": (("q", "k", "v", "meta"), ("out",)),
    "attn_decode": (("q", "kc", "vc", "kt", "vt", "n_keys", "meta"), ("o_out", "m_out", "l_out")),
    "attn_decode_combine": (("o", "m", "l", "gate", "n_keys", "meta"), ("out",)),
}

# Kernels that read their inputs in place with their strides (built with ensure_row_contiguous off): MLX would
# otherwise copy a strided view into a contiguous buffer first, one more launch.
STRIDED = frozenset({"attn_decode_combine"})


def _disabled() -> frozenset:
    """Kernels switched off by QWEN35_MLX_DISABLE_KERNELS (comma-separated names of KERNELS): their callers take
    the MLX-ops path instead. For diagnosing a kernel on a user's machine and for A/B benchmarks."""
    names = frozenset(n.strip() for n in os.environ.get("QWEN35_MLX_DISABLE_KERNELS", "").split(",") if n.strip())
    unknown = names - KERNELS.keys()
    if unknown:
        raise ValueError(f"QWEN35_MLX_DISABLE_KERNELS: unknown kernel(s) {sorted(unknown)}; known: {sorted(KERNELS)}")
    return names


DISABLED = _disabled()


def enabled(name: str) -> bool:
    return name not in DISABLED


@lru_cache(maxsize=None)
def read_source(name: str) -> str:
    """metal/<name> from the installed data package qwen35_mlx.metal, else from the repo checkout."""
    try:
        return importlib.resources.files("qwen35_mlx.metal").joinpath(name).read_text()
    except (ImportError, FileNotFoundError, TypeError, AttributeError):
        return (_REPO_METAL / name).read_text()


# Headers after portable_<backend>.h, for the kernels that multiply tiles ({} = the backend)
TILE_HEADERS = {
    "gdn_chunk_prep": ("tiles_{}.h", "tiles.h"),            # float fragments (frag_a/b/c, mma)
    "gdn_chunk_scan": ("tiles_{}.h", "tiles.h"),
    "attn_flash": ("tiles_{}.h", "tiles16_{}.h"),           # 16-bit operands (frag_a16/b16, mma16)
}


def kernel_source(name: str, backend: str, dynamic: bool = False) -> tuple[str, str]:
    """(header, body) exactly as handed to the backend's kernel factory; dynamic: the body's TG_ARRAYs are carved
    from dynamic shared memory (CUDA only), not declared as arrays."""
    parts = [f"portable_{backend}.h"] + [h.format(backend) for h in TILE_HEADERS.get(name, ())]
    return _header(tuple(read_source(p) for p in parts)), _body(backend, read_source(f"{name}.metal"), dynamic)


# Keyed by the source texts (read once, so their hashes are cached): a launch finds its stripped text in a
# dict lookup, and a test that swaps a source (a planted bug) gets the swapped one.
@lru_cache(maxsize=None)
def _header(texts: tuple) -> str:
    return "".join(_strip(t) + "\n" for t in texts)


@lru_cache(maxsize=None)
def _body(backend: str, text: str, dynamic: bool = False) -> str:
    if not dynamic:                  # TG_ARRAY(T, name, n): a plain array (else portable_cuda.h carves it)
        text = _TG_ARRAY.sub(r"threadgroup \1 \2[\3];", text.replace("TG_ARRAYS_BEGIN\n", "\n"))
    return _strip(PROLOGUE[backend] + text)


_TG_ARRAY = re.compile(r"^TG_ARRAY\((\w+), (\w+), (.+)\)$", re.M)


_COMMENT = re.compile(r"//.*$")


def _strip(text: str) -> str:
    """Comments and indentation out, line breaks kept."""
    return "\n".join(_COMMENT.sub("", line).strip() for line in text.split("\n"))


# Scalars a kernel reads never travel in arrays of up to 8 bytes: MLX on CUDA keeps those in managed host memory
# that the GPU reads remotely (its allocator's small pool), and every threadgroup waits on such a read before its
# work. norm_gemv, reading its eps that way, paid ~27 us a launch on an H100 whatever its size; ~10 us once eps
# became a template constant (benchmarks/RESULTS.md, 2026-12-07). So floats fixed for a model are template
# constants (float_bits) and ints go in arrays of at least 16 bytes (ints). Any array made from host values lives
# in managed memory there, written by the CPU and migrated to the GPU on its first read: ints keeps one array per
# value tuple, so a meta read every decode step is written once, and a decode step's changing ints come from the
# step before it on the device (Qwen35Model._decode_step).

def float_bits(x: float) -> int:
    """x as float32 bits in an int: a float template constant (the kernel reads it back with bits_float)."""
    return struct.unpack("<i", struct.pack("<f", x))[0]


@lru_cache(maxsize=1024)
def ints(*values: int):
    """An int32 input of `values` (the kernel reads values[i] as meta[i]), zero-padded to 16 bytes; one array per
    tuple of values, shared by every caller (see above): never written into."""
    return mx.array([*values, *[0] * (4 - len(values))], dtype=mx.int32)


STATIC_SMEM = 48 * 1024       # CUDA's static shared memory per block; TG_ARRAYs past it go dynamic


def kernel(name: str, backend: str, tg_arrays: tuple = ()):
    """The callable kernel `name` for backend "metal" or "cuda" (built on first use). Looked up once per launch
    (decode makes ~15 launches a step), so by identities: the factory and read_source (tests swap both).
    tg_arrays: the byte sizes of the body's TG_ARRAYs, in order: past CUDA's 48 KiB of static shared memory they
    are carved from dynamic shared memory."""
    factory = mx.fast.metal_kernel if backend == "metal" else mx.fast.cuda_kernel
    smem = sum(-(-n // 16) * 16 for n in tg_arrays)
    return _kernel(name, backend, factory, read_source, smem if backend == "cuda" and smem > STATIC_SMEM else 0)


@lru_cache(maxsize=None)
def _kernel(name, backend, factory, reader, smem=0):
    return _build(factory, name, *kernel_source(name, backend, smem > 0), smem)


@lru_cache(maxsize=None)
def _build(factory, name, header, body, smem=0):
    inputs, outputs = KERNELS[name]
    extra = {"shared_memory": smem} if smem else {}
    if name in STRIDED:
        extra["ensure_row_contiguous"] = False
    return factory(name=name, input_names=list(inputs), output_names=list(outputs), source=body, header=header,
                   **extra)
