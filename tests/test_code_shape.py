"""Code shape: no function of the package is longer than ``MAX_LINES`` lines, counted from its ``def`` line to its
last line (docstring, comments and blank lines inside included; decorators not). Longer ones are split into named
helpers. Duplicate code is checked by pylint (``duplicate-code``, configured in pyproject.toml) in ``.ci/run``."""

import ast
import os

PKG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "landmarks_lib")
MAX_LINES = 80


def _long_functions(source: str, filename: str, limit: int = MAX_LINES) -> list:
    """``file:line function (N lines)`` for every function or method (nested ones included) in ``source`` over
    ``limit`` lines."""
    out = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            n = node.end_lineno - node.lineno + 1
            if n > limit:
                out.append(f"{filename}:{node.lineno} {node.name} ({n} lines)")
    return out


def _package_files() -> list:
    """Every ``.py`` file under the package, sorted."""
    return sorted(os.path.join(root, f) for root, _, files in os.walk(PKG) for f in files if f.endswith(".py"))


def test_the_counter_counts_from_def_to_the_last_line():
    body = "".join(f"    x{i} = {i}\n" for i in range(78))
    ok = f'@decorator\ndef f():\n    """doc"""\n{body}'  # def + docstring + 78 lines = 80
    assert _long_functions(ok, "m.py") == []
    assert _long_functions(ok + "    return x0\n", "m.py") == ["m.py:2 f (81 lines)"]
    nested = "class C:\n    def g(self):\n" + "".join(f"        y{i} = {i}\n" for i in range(80))
    assert _long_functions(nested, "n.py") == ["n.py:2 g (81 lines)"]


def test_no_function_is_over_80_lines():
    files = _package_files()
    assert len(files) > 20
    top = os.path.dirname(PKG)
    long = [hit for path in files
            for hit in _long_functions(open(path, encoding="utf-8").read(), os.path.relpath(path, top))]
    assert not long, f"functions over {MAX_LINES} lines (split them into named helpers):\n" + "\n".join(long)
