"""The example notebooks run top to bottom (any cell error fails) on the tiny VL checkpoint, in a kernel of
this interpreter, in a temporary working directory (where they write their media); and they are stored
without outputs."""

import json
import os
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
NOTEBOOKS = {"images.ipynb": ["scene.png", "scene_night.png"], "video.ipynb": ["clip.mp4"]}
CELL_TIMEOUT = 120  # seconds per cell; the whole notebook takes a few seconds on the tiny checkpoint


@pytest.fixture
def kernel_env(tmp_path, monkeypatch, dense_vl_path):
    """A `python3` kernelspec running sys.executable, found first via JUPYTER_PATH (so a user-level
    kernelspec of another interpreter cannot be picked), and the notebooks' environment."""
    spec = tmp_path / "jupyter" / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (tests)", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.setenv("QWEN35_MLX_EXAMPLE_MODEL", str(dense_vl_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    work = tmp_path / "work"
    work.mkdir()
    return work


@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_notebook_runs(name, kernel_env):
    nb = nbformat.read(EXAMPLES / name, as_version=4)
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=CELL_TIMEOUT,
                                     resources={"metadata": {"path": str(kernel_env)}})
    client.execute()  # raises CellExecutionError naming the cell on any error
    for media in NOTEBOOKS[name]:
        assert (kernel_env / media).is_file(), f"{name} did not write {media} into its working directory"
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert f"loaded {os.environ['QWEN35_MLX_EXAMPLE_MODEL']}" in text  # it ran on the tiny checkpoint


@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_notebook_stored_without_outputs(name):
    nb = nbformat.read(EXAMPLES / name, as_version=4)
    nbformat.validate(nb)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert not cell.get("outputs") and cell.get("execution_count") is None, \
                f"{name}: cell {i} has outputs; clear them before committing"
