"""Compiling with the host C++ compiler, cached by content hash.

Three artifacts live in the cache directory (METAL_EMU_CACHE, default tests/.cache/metal_emu):
  rt-<hash>.so           the scheduler (csrc/runtime.cpp), loaded once with RTLD_GLOBAL
  pch-<hash>/            the precompiled shim (csrc/metal_emu.h and csrc/emu/*.h)
  k-<hash>.cpp / .so     one per generated kernel text
Each is written under a temporary name and renamed into place, so concurrent pytest processes
can build the same artifact at once: the last rename wins and every copy is complete.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
from functools import cache
from pathlib import Path

CSRC = Path(__file__).resolve().parent / "csrc"
CXX = os.environ.get("METAL_EMU_CXX", "g++")
FLAGS = ["-std=c++20", "-O2", "-g0", "-fPIC", "-shared", "-ffp-contract=off", "-fno-strict-aliasing",
         "-fsingle-precision-constant",  # MSL has no double: an unsuffixed literal is a float
         "-Wno-attributes", "-Wno-unknown-pragmas", f"-I{CSRC}"]

_lock = threading.Lock()
_libraries: dict[str, ctypes.CDLL] = {}


class MetalEmuError(RuntimeError):
    """A kernel did something Metal does not allow, or the emulator could not run it."""


class MetalEmuCompileError(MetalEmuError):
    """The kernel text does not compile against the emulated Metal subset."""


def cache_dir() -> Path:
    default = Path(__file__).resolve().parents[1] / ".cache" / "metal_emu"
    path = Path(os.environ.get("METAL_EMU_CACHE", default))
    path.mkdir(parents=True, exist_ok=True)
    return path


def _digest(*parts: str | bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode() if isinstance(p, str) else p)
        h.update(b"\0")
    return h.hexdigest()[:20]


@cache
def _compiler_id() -> str:
    try:
        out = subprocess.run([CXX, "--version"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError) as e:
        raise MetalEmuError(f"metal_emu needs a C++20 compiler ({CXX}): {e}") from None
    return out.stdout.splitlines()[0]


def _shim_files() -> list[Path]:
    return sorted(p for p in CSRC.rglob("*") if p.is_file() and p.name != "runtime.cpp")


@cache
def shim_hash() -> str:
    return _digest(_compiler_id(), *FLAGS, *(p.read_bytes() for p in _shim_files()))


def _compile(args: list[str], what: str) -> None:
    proc = subprocess.run([CXX, *FLAGS, *args], capture_output=True, text=True)
    if proc.returncode:
        raise MetalEmuCompileError(f"{what} does not compile:\n{_trim(proc.stderr)}")


def _trim(log: str, limit: int = 60) -> str:
    lines = [ln for ln in log.splitlines() if not ln.startswith(("In file included", "   "))]
    more = f"\n... ({len(lines) - limit} more lines)" if len(lines) > limit else ""
    return "\n".join(lines[:limit]) + more


def _publish(tmp: Path, final: Path) -> None:
    os.replace(tmp, final)


def _precompiled_header() -> Path:
    """The directory holding metal_emu.h (a one-line wrapper) and its .gch (rebuilt if deleted)."""
    final = cache_dir() / f"pch-{shim_hash()}"
    if (final / "metal_emu.h.gch").exists():
        return final
    tmp = Path(tempfile.mkdtemp(prefix=final.name + ".tmp", dir=cache_dir()))
    try:
        (tmp / "metal_emu.h").write_text(f'#include "{CSRC / "metal_emu.h"}"\n')
        # The .gch is only used when built with the kernels' flags; -shared is harmless here.
        _compile(["-x", "c++-header", str(tmp / "metal_emu.h"), "-o", str(tmp / "metal_emu.h.gch")],
                 "the metal_emu shim")
        try:
            os.rename(tmp, final)
        except OSError:  # another process won the race
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


@cache
def runtime() -> ctypes.CDLL:
    src = [CSRC / "runtime.cpp", CSRC / "emu" / "runtime.h"]
    final = cache_dir() / f"rt-{_digest(_compiler_id(), *FLAGS, *(p.read_bytes() for p in src))}.so"
    if not final.exists():
        tmp = final.with_suffix(f".tmp{os.getpid()}.so")
        _compile([str(src[0]), "-o", str(tmp)], "the metal_emu runtime")
        _publish(tmp, final)
    lib = ctypes.CDLL(str(final), mode=ctypes.RTLD_GLOBAL)
    lib.emu_launch.restype = ctypes.c_int
    lib.emu_launch.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.c_void_p,
                               ctypes.POINTER(ctypes.c_uint32), ctypes.POINTER(ctypes.c_uint32),
                               ctypes.c_int, ctypes.c_uint64, ctypes.c_uint64, ctypes.c_char_p,
                               ctypes.c_size_t]
    return lib


def kernel_library(text: str, what: str, hint: str = "") -> ctypes.CDLL:
    """The compiled kernel text (cached on disk and in the process)."""
    runtime()
    key = _digest(shim_hash(), text)
    with _lock:
        if key in _libraries:
            return _libraries[key]
        final = cache_dir() / f"k-{key}.so"
        if not final.exists():
            pch = _precompiled_header()
            cpp = cache_dir() / f"k-{key}.cpp"
            tmp_cpp = cpp.with_suffix(f".tmp{os.getpid()}.cpp")
            tmp_cpp.write_text(text)
            _publish(tmp_cpp, cpp)
            tmp = final.with_suffix(f".tmp{os.getpid()}.so")
            try:
                _compile(["-include", str(pch / "metal_emu.h"), str(cpp), "-o", str(tmp)], what)
            except MetalEmuCompileError as e:
                raise MetalEmuCompileError(f"{e}\n(generated text: {cpp}){hint}") from None
            _publish(tmp, final)
        lib = ctypes.CDLL(str(final))
        _libraries[key] = lib
        return lib
