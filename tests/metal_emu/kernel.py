"""metal_kernel: the drop-in for mx.fast.metal_kernel, and the launch with poisoned, guarded buffers."""

from __future__ import annotations

import contextlib
import ctypes
import os
import threading

import mlx.core as mx
import numpy as np

from . import build, source
from .build import MetalEmuError

SCHEDULES = ("forward", "reverse", "random")
_SCHEDULE_IDS = {"forward": 0, "reverse": 1, "random": 2}
MAX_THREADS_PER_THREADGROUP = 1024
THREADGROUP_MEMORY_LIMIT = 32768  # bytes, as on Apple GPUs

_INPUT_GUARD = b"\xff\xff"     # NaN in every float type: out-of-bounds reads yield NaN
_OUTPUT_GUARD = b"\xa5\x7f"    # 0x7FA5, another NaN: any write over it is an out-of-bounds write
_UNWRITTEN = 0xFF              # output elements start as NaN unless init_value is given

_state = threading.local()
_launch_lock = threading.Lock()


class MetalEmuRaceError(MetalEmuError):
    """Outputs differ between schedules: a race between sync points (a missing barrier?)."""


def default_schedules() -> tuple[str, ...]:
    """The schedules each launch runs: set by `schedules(...)`, else METAL_EMU_SCHEDULE, else all."""
    chosen = getattr(_state, "schedules", None)
    return chosen if chosen is not None else _parse(os.environ.get("METAL_EMU_SCHEDULE", "all"))


@contextlib.contextmanager
def schedules(which):
    """Run launches in this block under `which`: "forward", "reverse", "random", "all" or a list."""
    previous = getattr(_state, "schedules", None)
    _state.schedules = _parse(which)
    try:
        yield
    finally:
        _state.schedules = previous


def _parse(which) -> tuple[str, ...]:
    names = SCHEDULES if which == "all" else (which,) if isinstance(which, str) else tuple(which)
    bad = [n for n in names if n not in SCHEDULES]
    if bad or not names:
        raise ValueError(f"metal_emu: unknown schedule {which!r}; use one of {SCHEDULES} or 'all'")
    return names


def metal_kernel(name, input_names, output_names, source, header="", ensure_row_contiguous=True,
                 atomic_outputs=False, compile_options=None):
    """Same signature as mlx.core.fast.metal_kernel (MLX 0.32.4); runs the kernel on the CPU."""
    if not output_names:
        raise ValueError("[metal_kernel] Must specify at least one output.")
    if compile_options is not None:
        if not isinstance(compile_options, dict):
            raise ValueError("[metal_kernel] Expected `compile_options` to be a dict.")
        for key, value in compile_options.items():
            if key != "math_mode":
                raise ValueError(f"[metal_kernel] Unknown compile option `{key}`.")
            if value not in ("safe", "relaxed", "fast"):
                raise ValueError("[metal_kernel] Expected math_mode to be 'safe', 'relaxed', or 'fast'.")
    return EmuKernel(name, list(input_names), list(output_names), source, header,
                     ensure_row_contiguous, atomic_outputs)


class EmuKernel:
    def __init__(self, name, input_names, output_names, source, header, ensure_row_contiguous,
                 atomic_outputs):
        self.name, self.input_names, self.output_names = name, input_names, output_names
        self.source, self.header = source, header
        self.ensure_row_contiguous, self.atomic_outputs = ensure_row_contiguous, atomic_outputs

    def __call__(self, *, inputs, output_shapes, output_dtypes, grid, threadgroup, template=None,
                 init_value=None, verbose=False, stream=None, schedule=None, seed=0):
        """As MLX's kernel call; `schedule` and `seed` are the emulator's own (see schedules())."""
        for actual, expected, what in ((len(inputs), len(self.input_names), "inputs"),
                                       (len(output_shapes), len(self.output_names), "output_shapes"),
                                       (len(output_dtypes), len(self.output_names), "output_dtypes")):
            if actual != expected:
                raise ValueError(f"[metal_kernel] Expected `{what}` to have size {expected} but "
                                 f"got size {actual}.")
        arrays = [x if isinstance(x, mx.array) else mx.array(x) for x in inputs]
        template = list(template or [])
        for _, value in template:
            if not isinstance(value, (bool, int, mx.Dtype)):
                raise ValueError("[metal_kernel] Invalid template argument. Must be "
                                 "`mlx.core.Dtype`, `int` or `bool`.")
        specs = [source.InputSpec(n, a.dtype, a.ndim, a.size)
                 for n, a in zip(self.input_names, arrays)]
        kernel = source.make_kernel(self.name, self.header, self.source, specs, self.output_names,
                                    list(output_dtypes), template, self.atomic_outputs)
        if verbose:
            print(f"Generated source code for `{self.name}`:\n```\n{kernel.source_text()}\n```")
        grid, tg = _dims(grid, "grid"), _dims(threadgroup, "threadgroup")
        if tg[0] * tg[1] * tg[2] > MAX_THREADS_PER_THREADGROUP:
            raise ValueError(f"Thread group size ({tg[0] * tg[1] * tg[2]}) is greater than  the "
                             f"maximum allowed threads per threadgroup ({MAX_THREADS_PER_THREADGROUP}).")
        tg = tuple(min(t, g) for t, g in zip(tg, grid))  # as MLX dispatches
        hint = ("\n(MLX 0.32.4 writes a broken signature when `_shape`/`_strides`/`_ndim` are used "
                "with several outputs and no thread attribute; on Metal too)"
                if kernel.signature_is_broken() else "")
        lib = build.kernel_library(kernel.compile_text(), f"kernel '{self.name}'", hint)
        hosts = [_host_input(a, self.ensure_row_contiguous) for a in arrays]
        shapes = [tuple(int(d) for d in s) for s in output_shapes]
        names = schedule if schedule is not None else default_schedules()
        runs = {s: self._launch(lib, kernel, hosts, shapes, list(output_dtypes), grid, tg,
                                init_value, s, seed) for s in _parse(names)}
        first, *others = runs
        for other in others:
            _compare(self.name, self.output_names, runs[first], runs[other], first, other,
                     self.atomic_outputs, list(output_dtypes))
        return [_to_mlx(out, dtype) for out, dtype in zip(runs[first], output_dtypes)]

    def _launch(self, lib, kernel, hosts, shapes, dtypes, grid, tg, init_value, schedule, seed):
        buffers, keep = [], []
        inputs = [_GuardedInput(h) for h in hosts]
        outputs = [_GuardedOutput(s, d, init_value) for s, d in zip(shapes, dtypes)]
        for buf, host, info in zip(inputs, hosts, kernel.shape_infos):
            buffers.append(buf.pointer)
            if host.ndim > 0:
                extras = ((info[0], np.array(host.shape, np.int32)),
                          (info[1], np.array(host.strides, np.int64)),
                          (info[2], np.array(host.ndim, np.int32)))
                for used, arr in extras:
                    if used:
                        keep.append(arr)
                        buffers.append(arr.ctypes.data)
        buffers += [o.pointer for o in outputs]
        args = (ctypes.c_void_p * max(1, len(buffers)))(*buffers)
        entry = ctypes.cast(lib.emu_entry, ctypes.c_void_p)
        err = ctypes.create_string_buffer(8192)
        if all(grid):
            with _launch_lock:
                rc = build.runtime().emu_launch(
                    self.name.encode(), entry, args, (ctypes.c_uint32 * 3)(*grid),
                    (ctypes.c_uint32 * 3)(*tg), _SCHEDULE_IDS[schedule], seed,
                    THREADGROUP_MEMORY_LIMIT, err, len(err))
            if rc:
                raise MetalEmuError(f"{err.value.decode(errors='replace')} [{schedule} schedule]")
        for name, buf in zip(self.input_names, inputs):
            buf.check(f"kernel '{self.name}': input '{name}'")
        for name, buf in zip(self.output_names, outputs):
            buf.check(f"kernel '{self.name}': output '{name}'")
        return [o.body() for o in outputs]


def _dims(value, what):
    dims = tuple(int(v) for v in value)
    if len(dims) != 3 or min(dims) < 0:
        raise ValueError(f"[metal_kernel] `{what}` must be 3 non-negative ints, got {value!r}")
    if what == "threadgroup" and min(dims) == 0:
        raise ValueError("[metal_kernel] `threadgroup` sizes must be positive")
    return dims


# ---- host buffers ----------------------------------------------------------------------------

class _Host:
    """An input as the kernel sees it: numpy data (bf16 as uint16) and MLX's element strides."""

    def __init__(self, data: np.ndarray, strides: tuple[int, ...]):
        self.data, self.strides = data, strides
        self.shape, self.ndim = data.shape, data.ndim


def _host_input(a: mx.array, ensure_row_contiguous: bool) -> _Host:
    data = np.asarray(a.view(mx.uint16) if a.dtype == mx.bfloat16 else a)
    if ensure_row_contiguous or data.flags.c_contiguous:
        data = np.ascontiguousarray(data)
        strides, step = [], 1
        for d in reversed(data.shape):
            strides.append(step)
            step *= d
        return _Host(data, tuple(reversed(strides)))
    return _Host(data, tuple(s // data.itemsize for s in data.strides))


def _guard_bytes(nbytes: int) -> int:
    return min(max(4096, nbytes // 2), 1 << 24) // 64 * 64


def _aligned(nbytes: int) -> tuple[np.ndarray, int]:
    raw = np.empty(nbytes + 64, np.uint8)
    start = (-raw.ctypes.data) % 64
    return raw, start


class _Guarded:
    def __init__(self, body_bytes: int, pattern: bytes):
        self.guard = _guard_bytes(body_bytes)
        self.raw, self.start = _aligned(2 * self.guard + body_bytes)
        self.mem = self.raw[self.start:self.start + 2 * self.guard + body_bytes]
        self.body_bytes = body_bytes
        self.pattern = np.frombuffer(pattern * (self.guard // 2), np.uint8)
        self.mem[:self.guard] = self.pattern
        self.mem[self.guard + body_bytes:] = self.pattern

    def written_guard(self) -> tuple[int, int] | None:
        """(first offending byte relative to the body, count of changed bytes) or None."""
        lo = np.flatnonzero(self.mem[:self.guard] != self.pattern)
        hi = np.flatnonzero(self.mem[self.guard + self.body_bytes:] != self.pattern)
        if not len(lo) and not len(hi):
            return None
        first = int(lo[-1]) - self.guard if len(lo) else self.body_bytes + int(hi[0])
        return first, len(lo) + len(hi)


class _GuardedInput(_Guarded):
    """The input's elements, between guards of NaN bits; element strides as MLX passes them."""

    def __init__(self, host: _Host):
        d, item = host.data, host.data.itemsize
        lo = sum(s * (n - 1) for s, n in zip(host.strides, d.shape) if s < 0 and n > 0)
        hi = sum(s * (n - 1) for s, n in zip(host.strides, d.shape) if s > 0 and n > 0)
        span = (hi - lo + 1) * item if d.size else 0
        super().__init__(span, _INPUT_GUARD)
        self.mem[self.guard:self.guard + span] = 0xFF
        self.item, self.size = item, d.size
        offset = self.guard + (-lo) * item
        if d.size:
            target = np.lib.stride_tricks.as_strided(
                self.mem[offset:].view(d.dtype), shape=d.shape,
                strides=tuple(s * item for s in host.strides))
            target[...] = d
        self.pointer = self.mem.ctypes.data + offset

    def check(self, what: str) -> None:
        hit = self.written_guard()
        if hit:
            raise MetalEmuError(f"{what}: out-of-bounds write ({hit[1]} byte(s) outside the input's "
                                f"memory, first at byte offset {hit[0]})")


class _GuardedOutput(_Guarded):
    def __init__(self, shape, dtype, init_value):
        self.shape, self.dtype = shape, dtype
        self.np_dtype = np.uint16 if dtype == mx.bfloat16 else np.dtype(_np_dtype(dtype))
        self.item = np.dtype(self.np_dtype).itemsize
        self.size = int(np.prod(shape, dtype=np.int64))
        super().__init__(self.size * self.item, _OUTPUT_GUARD)
        body = self.mem[self.guard:self.guard + self.body_bytes]
        if init_value is None:
            body[:] = _UNWRITTEN
        elif self.size:
            fill = mx.full((1,), init_value, mx.float32).astype(dtype)
            value = np.asarray(fill.view(mx.uint16) if dtype == mx.bfloat16 else fill)
            body.view(self.np_dtype)[:] = value[0]
        self.pointer = self.mem.ctypes.data + self.guard

    def check(self, what: str) -> None:
        hit = self.written_guard()
        if hit:
            first, count = hit
            index = first // self.item
            where = (f"{-index} element(s) before the start" if index < 0
                     else f"{index - self.size + 1} element(s) past the end")
            raise MetalEmuError(
                f"{what}: out-of-bounds write at flat element index {index} ({where}; the output "
                f"has {self.size} elements of shape {self.shape}); {count} guard byte(s) changed")

    def body(self) -> np.ndarray:
        flat = self.mem[self.guard:self.guard + self.body_bytes].view(self.np_dtype)
        return flat.reshape(self.shape).copy()


def _np_dtype(dtype):
    names = {mx.float32: np.float32, mx.float16: np.float16, mx.float64: np.float64,
             mx.bool_: np.bool_, mx.int8: np.int8, mx.int16: np.int16, mx.int32: np.int32,
             mx.int64: np.int64, mx.uint8: np.uint8, mx.uint16: np.uint16, mx.uint32: np.uint32,
             mx.uint64: np.uint64, mx.complex64: np.complex64}
    return names[dtype]


def _to_mlx(out: np.ndarray, dtype) -> mx.array:
    return mx.array(out).view(mx.bfloat16) if dtype == mx.bfloat16 else mx.array(out)


def _compare(kname, output_names, a, b, sa, sb, atomic, dtypes=None):
    for i, (name, x, y) in enumerate(zip(output_names, a, b)):
        bf16 = dtypes is not None and dtypes[i] == mx.bfloat16
        if atomic and np.issubdtype(x.dtype, np.floating):  # float atomics: order-dependent rounding
            same = np.isclose(x, y, rtol=1e-5, atol=1e-6, equal_nan=True)
        else:
            same = (x.view(np.uint8).reshape(x.shape + (-1,)) ==
                    y.view(np.uint8).reshape(y.shape + (-1,))).all(-1)
        if not same.all():
            bad = np.argwhere(~same)
            idx = tuple(int(j) for j in bad[0])
            show = (lambda v: float(np.uint32(int(v) << 16).view(np.float32))) if bf16 else (
                lambda v: v.item())
            raise MetalEmuRaceError(
                f"kernel '{kname}': output '{name}' differs between the {sa} and {sb} schedules "
                f"at {len(bad)} of {x.size} elements, first at {idx}: {show(x[idx])!r} vs "
                f"{show(y[idx])!r}. "
                "Threads read memory that other threads write between the same sync points: a "
                "missing threadgroup_barrier (or a race on device memory).")


def assert_schedule_independent(fn, *args, **kwargs):
    """Run fn(*args, **kwargs) under each schedule; assert bit-identical outputs; return the first.

    Outputs may be mx.array, numpy arrays, or lists/tuples/dicts of them.
    """
    results, returned = {}, None
    for s in SCHEDULES:
        with schedules(s):
            out = fn(*args, **kwargs)
        returned = out if returned is None else returned
        results[s] = _flatten(out)
    first = SCHEDULES[0]
    for other in SCHEDULES[1:]:
        names = [f"result{i}" for i in range(len(results[first]))]
        if len(results[other]) != len(names):
            raise MetalEmuRaceError(f"{getattr(fn, '__name__', fn)}: the number of outputs differs")
        _compare(getattr(fn, "__name__", "fn"), names, results[first], results[other], first,
                 other, False)
    return returned


def _flatten(tree) -> list[np.ndarray]:
    if isinstance(tree, dict):
        return [x for k in sorted(tree) for x in _flatten(tree[k])]
    if isinstance(tree, (list, tuple)):
        return [x for t in tree for x in _flatten(t)]
    if isinstance(tree, mx.array):
        return [np.asarray(tree.view(mx.uint16) if tree.dtype == mx.bfloat16 else tree)]
    return [np.asarray(tree)]
