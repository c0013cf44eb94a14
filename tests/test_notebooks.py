"""The example notebooks run top to bottom (nbclient) on a tiny model folder made here (untrained: fast)."""

from pathlib import Path

import nbformat
import pytest
import torch
from nbclient import NotebookClient

from stldec import StlDecConfig, StlDecForCausalLM, StlTokenizer
from stldec.stl import FormulaGenerator, StlKernelEncoder

NOTEBOOKS = sorted((Path(__file__).parent.parent / "examples" / "notebooks").glob("*.ipynb"))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("model")
    encoder = StlKernelEncoder(FormulaGenerator("random", seed=0, n_points=30).sample(16), n_trajectories=300,
                               n_points=30)
    torch.manual_seed(0)
    StlDecForCausalLM(StlDecConfig.from_preset("tiny", embedding_dim=encoder.embedding_dim)).save_pretrained(d)
    StlTokenizer().save_pretrained(d)
    encoder.save_pretrained(d / "encoder")
    return d


def test_notebooks_are_stored_executed():
    """Committed with the outputs of one top-to-bottom run (the `make run` model), so they read without running."""
    assert len(NOTEBOOKS) >= 3
    for path in NOTEBOOKS:
        code = [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
        assert [c.execution_count for c in code] == list(range(1, len(code) + 1)), path.name
        assert all(o["output_type"] != "error" for c in code for o in c.outputs), path.name
        assert any(c.outputs for c in code), path.name


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, model_dir, monkeypatch):
    monkeypatch.setenv("STLDEC_MODEL", str(model_dir))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("MPLBACKEND", "agg")
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o["output_type"] == "error"]
    assert not errors
