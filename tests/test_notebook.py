"""notebooks/analysis.ipynb: committed without outputs, and it runs on a real tiny sweep."""

from __future__ import annotations

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import REPO

NOTEBOOK = REPO / "notebooks" / "analysis.ipynb"


def test_notebook_is_committed_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.outputs == [] and c.execution_count is None for c in code)


@pytest.mark.slow
def test_notebook_executes_on_a_tiny_sweep(sweep, monkeypatch):
    monkeypatch.setenv("VAESWEEP_SWEEP_DIR", str(sweep))  # the kernel inherits the environment
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        nb,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    )
    client.execute()  # raises CellExecutionError on any error
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 4  # NLL/ELBO vs β, rate–distortion, reconstructions, scale history
    markdown = [o["data"]["text/markdown"] for o in outputs if "text/markdown" in o.get("data", {})]
    assert len(markdown) == 1 and "| likelihood | scale | β |" in markdown[0]
    assert not any("skipped" in o.get("text", "") for o in outputs)
