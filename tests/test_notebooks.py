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

from landmarks_lib.core import params as lp
from landmarks_lib.runs import pipeline

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


# The few names a notebook alone uses besides run_dir, profile and overrides.
OWN = {"01_eda": ["num_examples", "shape_threshold"], "02_train": ["retrain"], "03_finetune": ["retrain"],
       "04_visualize": []}


@pytest.mark.parametrize("py", SOURCES, ids=IDS)
def test_one_short_parameters_cell(py):
    nb = jupytext.read(_ipynb(py))
    cells = _parameter_cells(nb)
    assert len(cells) == 1, f"{len(cells)} cells tagged 'parameters'"
    first_code = next(c for c in nb.cells if c.cell_type == "code")
    assert first_code is cells[0], "the parameters cell must be the first code cell"
    assert len(cells[0].source.splitlines()) <= 20
    tree = ast.parse(cells[0].source)
    values = {}
    for node in tree.body:
        assert isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name), \
            f"line {node.lineno}: the parameters cell holds only `name = literal` lines"
        values[node.targets[0].id] = ast.literal_eval(node.value)
    name = os.path.basename(py)[:-3]
    assert list(values) == ["run_dir", "profile", "overrides", *OWN[name]]
    assert values["run_dir"] == lp.DEFAULTS["run_dir"] and values["overrides"] == {} and values["profile"] == ""
    assert not set(OWN[name]) & set(lp.SPEC)
    # papermill parses the same names (a second '=' on a line, e.g. in a comment, hides a parameter from it)
    assert list(papermill.inspect_notebook(_ipynb(py))) == list(values)


@pytest.mark.parametrize("py", SOURCES, ids=IDS)
def test_start_right_after_the_parameters_cell_and_finish_at_the_end(py):
    nb = jupytext.read(py)
    code = [c for c in nb.cells if c.cell_type == "code"]
    name = os.path.basename(py)[:-3]
    assert f'params, run = workflow.start("{name}", globals())' in code[1].source
    assert code[-1].source.strip() == f'workflow.finish("{name}", params, run)'


@pytest.mark.parametrize("py", SOURCES, ids=IDS)
def test_notebooks_do_no_file_io_of_their_own(py):
    with open(py) as f:
        text = f.read()
    for word in ("open(", "os.path", "np.load", "pd.read_csv", "json.load", "import os"):
        assert word not in text, f"{py}: {word!r}: file I/O belongs to run.RunFolder / workflow"


@pytest.mark.parametrize("py", SOURCES, ids=IDS)
def test_cells_hold_no_logic_or_path_tricks(py):
    with open(py) as f:
        text = f.read()
    assert "sys.path" not in text
    assert not re.search(r"(?<![\w.])eval\(", text)
    assert "import landmarks_lib" in text or "from landmarks_lib" in text
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
    saved = re.findall(r'^viz\.save_figure\(fig, run\.figure\("(\w+)"\)\)$', text, re.M)
    assert shown == len(saved)
    name = os.path.basename(py)[:2]
    assert all(s.startswith(name + "_") for s in saved)
