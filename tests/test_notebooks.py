"""The notebooks: percent-format ``.py`` sources paired with committed ``.ipynb`` files without outputs, one
``parameters`` cell naming exactly the parameter set (so papermill's injection reaches every parameter), and only
parameters, calls, narrative and plots in the cells (no loops, branches, ``sys.path`` tricks or ``eval``)."""

import ast
import glob
import json
import os
import re

import jupytext
import papermill
import pytest

from landmarks_lib import params as lp
from landmarks_lib import pipeline

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES = sorted(glob.glob(os.path.join(REPO, "notebooks", "*.py")))
IDS = [os.path.basename(p) for p in SOURCES]


def _ipynb(py):
    return py[:-3] + ".ipynb"


def _code(cell) -> str:
    """A code cell's source with IPython magics and shell lines removed (for ``ast``)."""
    return "\n".join(line for line in cell.source.splitlines() if not line.lstrip().startswith(("%", "!")))


def _parameter_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code" and "parameters" in c.metadata.get("tags", [])]


def test_the_pipeline_notebooks_exist():
    assert [os.path.basename(p)[:-3] for p in SOURCES] == list(pipeline.NOTEBOOKS)


@pytest.mark.parametrize("py", SOURCES, ids=IDS)
def test_paired_ipynb_matches_the_py(py):
    assert os.path.exists(_ipynb(py)), f"{_ipynb(py)} is missing: run `make sync-notebooks`"
    a, b = jupytext.read(py), jupytext.read(_ipynb(py))
    cells_a = [(c.cell_type, c.source) for c in a.cells]
    cells_b = [(c.cell_type, c.source) for c in b.cells]
    assert cells_a == cells_b, f"{py} and its .ipynb differ: run `make sync-notebooks`"
    assert b.metadata.get("kernelspec", {}).get("name") == "python3"


@pytest.mark.parametrize("py", SOURCES, ids=IDS)
def test_committed_ipynb_has_no_outputs(py):
    with open(_ipynb(py)) as f:
        nb = json.load(f)
    for i, c in enumerate(nb["cells"]):
        if c["cell_type"] == "code":
            assert c.get("outputs") == [], f"cell {i} has outputs"
            assert c.get("execution_count") is None, f"cell {i} has an execution count"


@pytest.mark.parametrize("py", SOURCES, ids=IDS)
def test_one_parameters_cell_with_exactly_the_parameter_set(py):
    nb = jupytext.read(_ipynb(py))
    cells = _parameter_cells(nb)
    assert len(cells) == 1, f"{len(cells)} cells tagged 'parameters'"
    first_code = next(c for c in nb.cells if c.cell_type == "code")
    assert first_code is cells[0], "the parameters cell must be the first code cell"
    tree = ast.parse(cells[0].source)
    values = {}
    for node in tree.body:
        assert isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name), \
            f"line {node.lineno}: the parameters cell holds only `name = literal` lines"
        values[node.targets[0].id] = ast.literal_eval(node.value)
    assert list(values) == list(lp.SPEC), "parameter names differ from params.SPEC (or their order)"
    assert values == lp.DEFAULTS, "parameter defaults differ from params.DEFAULTS"
    # papermill parses the same names (a second '=' on a line, e.g. in a comment, hides a parameter from it)
    assert list(papermill.inspect_notebook(_ipynb(py))) == list(lp.SPEC)


@pytest.mark.parametrize("py", SOURCES, ids=IDS)
def test_parameters_are_resolved_right_after_the_parameters_cell(py):
    nb = jupytext.read(py)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert "params_from_namespace(globals())" in code[1].source


@pytest.mark.parametrize("py", SOURCES, ids=IDS)
def test_cells_hold_no_logic_or_path_tricks(py):
    with open(py) as f:
        text = f.read()
    assert "sys.path" not in text
    assert not re.search(r"(?<![\w.])eval\(", text)
    assert "import landmarks_lib" in text or "from landmarks_lib import" in text
    nb = jupytext.read(py)
    for i, c in enumerate(nb.cells):
        if c.cell_type != "code":
            continue
        for node in ast.walk(ast.parse(_code(c))):
            assert not isinstance(node, (ast.For, ast.While, ast.If, ast.Try, ast.FunctionDef, ast.ClassDef)), \
                f"cell {i}, line {node.lineno}: a {type(node).__name__} belongs in landmarks_lib (with a test)"


@pytest.mark.parametrize("py", SOURCES, ids=IDS)
def test_every_figure_is_saved_under_the_run_folder(py):
    with open(py) as f:
        text = f.read()
    shown = len(re.findall(r"^fig = viz\.", text, re.M))
    saved = len(re.findall(r'^viz\.save_figure\(fig, f"\{figures\}/[\w]+\.png"\)$', text, re.M))
    assert shown == saved
    assert 'figures = os.path.join(' in text or shown == 0
