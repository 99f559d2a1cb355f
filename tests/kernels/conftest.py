"""Kernel-test fixtures: run the package's Metal kernels on the CPU through tests/metal_emu."""

import sys
from pathlib import Path

import mlx.core as mx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for metal_emu

import metal_emu  # noqa: E402


@pytest.fixture
def metal_on_cpu(monkeypatch):
    """mx.fast.metal_kernel runs on the CPU emulator and mx.metal.is_available() is True.

    Every launch runs under metal_emu.default_schedules() (METAL_EMU_SCHEDULE, default all three)
    and must give bit-identical outputs. Yields the metal_emu module (schedules(),
    assert_schedule_independent(), the error types).
    """
    monkeypatch.setattr(mx.fast, "metal_kernel", metal_emu.metal_kernel)
    monkeypatch.setattr(mx.metal, "is_available", lambda: True)
    yield metal_emu


class Launched(set):
    """Names of the kernels looked up; .templates: (name, template dict) of each launch, in order."""


@pytest.fixture
def launched(monkeypatch):
    """The names of the kernels looked up from now on (every launch goes through _metal.kernel)."""
    from qwen35_mlx.kernels import _metal
    names = Launched()
    names.templates = []
    real = _metal.kernel

    def kernel(name, *a):
        names.add(name)
        fn = real(name, *a)

        def launch(*args, **kw):
            names.templates.append((name, dict(kw.get("template", ()))))
            return fn(*args, **kw)
        return launch
    monkeypatch.setattr(_metal, "kernel", kernel)
    return names
