"""The package's layering contract: imports point one way, and no two modules import each
other.

Layers, lowest first: ``core`` → ``model`` → ``data`` → ``run`` → ``sweep`` → ``analysis``;
the package's ``__init__`` and ``__main__`` sit above them all. Every import counts, at
module level or inside a function (an import hidden in a function is still a dependency).
A module may import its own layer and the layers below it; the only imports inside
functions are the few listed in ``IN_FUNCTION`` (optional or heavy dependencies), so a new
one fails here until it is justified.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "vaesweep"
LAYERS = ("core", "model", "data", "run", "sweep", "analysis")
TOP = len(LAYERS)  # vaesweep/__init__.py, vaesweep/__main__.py
#: (module, imported module): imports inside functions, each for a reason.
IN_FUNCTION = {
    # python -m vaesweep: each command loads only what it runs.
    ("vaesweep.__main__", "vaesweep.analysis.cli"),
    ("vaesweep.__main__", "vaesweep.sweep.entry"),
    # heavy: matplotlib, imported once the results have loaded.
    ("vaesweep.analysis.cli", "vaesweep.analysis.figures"),
    # heavy: torch and Lightning, only for `vaesweep evaluate`.
    ("vaesweep.analysis.cli", "vaesweep.run.evaluate"),
    # heavy: torch and the run layer, only when a sweep is a search.
    ("vaesweep.analysis.figures.search", "vaesweep.sweep.search"),
    # heavy: matplotlib and pandas, only when a sweep's W&B summary run draws its figures.
    ("vaesweep.analysis.wandb_summary", "vaesweep.analysis.figures"),
    ("vaesweep.analysis.wandb_summary", "vaesweep.analysis.results"),
    # heavy: Lightning, only for the data module (reading a dataset needs torch alone).
    ("vaesweep.data", "vaesweep.data.datamodule"),
    # heavy: Lightning, only in a process that runs jobs: a sweep's launching process
    # whose jobs run in workers never loads it.
    ("vaesweep.sweep.task", "vaesweep.run.driver"),
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in (SRC / PACKAGE).rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _target(name: str) -> str | None:
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _imports(module: str, path: Path) -> list[tuple[str, bool]]:
    """(imported vaesweep module, whether the import is inside a function)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    inner = {
        id(node)
        for fn in ast.walk(tree)
        if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef)
        for node in ast.walk(fn)
    }
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            names = [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            target = _target(name)
            if target is not None and target != module and not module.startswith(target + "."):
                out.append((target, id(node) in inner))
    return out


def _layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else TOP


GRAPH = {m: _imports(m, p) for m, p in MODULES.items()}


def test_every_module_belongs_to_a_layer():
    loose = [m for m in MODULES if _layer(m) == TOP and m not in ("vaesweep", "vaesweep.__main__")]
    assert not loose, f"modules outside the layers {LAYERS}: {loose}"


def test_imports_point_down():
    back = [
        f"{m} ({LAYERS[_layer(m)]}) imports {t} ({LAYERS[_layer(t)] if _layer(t) < TOP else 'top'})"
        for m, edges in GRAPH.items()
        for t, _ in edges
        if _layer(t) > _layer(m)
    ]
    assert not back, "imports against the layering:\n" + "\n".join(sorted(set(back)))


def test_no_two_modules_import_each_other():
    """No cycle, direct or through other modules (Tarjan's strongly connected components)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in {t for t, _ in GRAPH[v]}:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in GRAPH:
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_imports_inside_functions_are_the_justified_ones():
    found = {(m, t) for m, edges in GRAPH.items() for t, inner in edges if inner}
    assert found <= IN_FUNCTION, f"unjustified imports inside functions: {found - IN_FUNCTION}"


def test_the_contract_sees_a_back_edge(tmp_path, monkeypatch):
    """The check is not vacuous: a model module importing the run layer is caught."""
    bad = tmp_path / "bad.py"
    bad.write_text("from vaesweep.run.record import RESULTS_FILE\n")
    edges = _imports("vaesweep.model.bad", bad)
    assert ("vaesweep.run.record", False) in edges
    assert _layer("vaesweep.run.record") > _layer("vaesweep.model.bad")


def test_the_public_face_is_small_and_every_name_resolves():
    import subprocess
    import sys

    import pytest

    import vaesweep
    import vaesweep.data

    assert set(vaesweep.__all__) == {
        "__version__",
        "Likelihood",
        "BetaSchedule",
        "Network",
        "VAE",
        "VAEDataModule",
        "load_results",
        "aggregate",
        "write_sweep_figures",
    }
    for name in vaesweep.__all__:
        assert getattr(vaesweep, name) is not None
    from vaesweep.model.module import VAE

    assert vaesweep.VAE is VAE
    # `import vaesweep` alone loads neither torch nor pandas.
    code = "import sys, vaesweep; print('torch' in sys.modules, 'pandas' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
    # Reading a dataset (a plain-PyTorch script's data path) does not load Lightning; the
    # data module, re-exported by vaesweep.data, does when it is asked for.
    code = (
        "import sys; from vaesweep.data import load_dataset, preprocess; "
        "load_dataset('mnist_small'); print('lightning' in sys.modules); "
        "from vaesweep.data import VAEDataModule; print('lightning' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True"]
    with pytest.raises(AttributeError, match="no attribute 'DataModule'"):
        vaesweep.data.DataModule  # noqa: B018 - the lazy export names only what exists


@pytest.mark.slow
def test_a_sweeps_launching_process_loads_no_lightning():
    """What a sweep's launching process imports (the entry point, the sweep's callback and
    checks, the search, the shipped launcher and sweeper) leaves Lightning to the jobs;
    load_driver imports it. (End to end, with real workers:
    test_sweeps.test_parallel_sweep_leaves_lightning_to_its_workers.)"""
    import subprocess
    import sys

    code = (
        "import sys; import vaesweep.sweep.entry, vaesweep.sweep.callback, "
        "vaesweep.sweep.search, vaesweep.run.jobs, vaesweep.run.policy; "
        "import hydra_plugins.vaesweep_ray_launcher.ray_launcher; "
        "import hydra_plugins.vaesweep_optuna_sweeper.optuna_sweeper; "
        "print('lightning' in sys.modules); "
        "from vaesweep.sweep.task import load_driver; load_driver(); "
        "print('lightning' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True"]
