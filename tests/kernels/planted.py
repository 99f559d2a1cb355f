"""Planted bugs: a kernel source with one exact piece of text replaced must fail the check the original passes."""

import pytest

import metal_emu
from qwen35_mlx.kernels import _metal


def assert_caught(monkeypatch, source: str, text: str, replacement: str, run):
    """run() passes on metal/<source> as it is, and fails (a check or the emulator) with text replaced."""
    run()
    original = _metal.read_source(source)
    assert original.count(text) == 1, f"the text to mutate is not (uniquely) in {source}: {text!r}"
    mutated = original.replace(text, replacement)
    read = _metal.read_source
    monkeypatch.setattr(_metal, "read_source", lambda n: mutated if n == source else read(n))
    with pytest.raises((AssertionError, metal_emu.MetalEmuError)):
        run()
