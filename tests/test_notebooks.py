"""Every notebook in notebooks/ runs top to bottom without an error, and is saved without outputs.

Notebooks state their claims in markdown and ``assert`` them in code, so running one tests it.
Notebooks are found by globbing ``notebooks/*.ipynb``: a new notebook is picked up with no change
here.

The kernel is *this* interpreter (``sys.executable``). Its kernelspec is written to a temporary
folder and handed to the kernel manager directly, so a ``python3`` kernelspec installed elsewhere
(user, system, another virtual environment) is never used, and nothing needs installing beyond
``pip install -e ".[dev]"``.
"""
import pathlib

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
IDS = [p.name for p in NOTEBOOKS]

CELL_TIMEOUT_S = 300  # per cell; the notebooks are meant to run in seconds
KERNEL_ENV = {
    "MPLBACKEND": "Agg",  # non-interactive: figures are drawn, never shown
    # The notebooks multiply small matrices: BLAS threads only add overhead and fight with
    # other test workers for the cores.
    "OPENBLAS_NUM_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}


@pytest.fixture(scope="session")
def kernel_spec_manager(tmp_path_factory):
    """A kernelspec manager that knows one kernel, ``python3`` = sys.executable + ipykernel."""
    from ipykernel.kernelspec import write_kernel_spec
    from jupyter_client.kernelspec import KernelSpecManager

    kernels = tmp_path_factory.mktemp("jupyter") / "kernels"
    write_kernel_spec(kernels / "python3", overrides={"env": KERNEL_ENV})
    return KernelSpecManager(kernel_dirs=[str(kernels)])


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_runs(path, kernel_spec_manager):
    from jupyter_client.manager import AsyncKernelManager  # nbclient's default manager class

    nb = nbformat.read(path, as_version=4)
    km = AsyncKernelManager(kernel_name="python3", kernel_spec_manager=kernel_spec_manager)
    client = nbclient.NotebookClient(
        nb, km=km, timeout=CELL_TIMEOUT_S, resources={"metadata": {"path": str(path.parent)}}
    )
    client.execute()  # raises CellExecutionError (cell source and traceback) if any cell fails


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_is_saved_clean_and_uses_the_package(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    dirty = [
        i for i, c in enumerate(nb.cells)
        if c.cell_type == "code" and (c.outputs or c.execution_count is not None)
    ]
    assert not dirty, (
        f"{path.name}: code cells {dirty} were saved with outputs; clear all outputs before "
        "committing (Jupyter: Edit > Clear Outputs of All Cells) to keep the repository small"
    )
    source = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert "import minilora" in source or "from minilora" in source, (
        f"{path.name}: a notebook should import minilora, not re-implement it"
    )
