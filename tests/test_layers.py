"""The package's layers: each module imports only its own layer and the layers before it, with no cycle, and
imports inside functions only the third-party packages listed here (kept out of a lighter import path)."""

import ast
import os

import pytest

PKG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "landmarks_lib")
LAYERS = ["core", "data", "models", "inference", "evaluation", "training", "reporting", "runs"]

# module -> packages it may import inside a function, so that importing the module does not import them: third-party
# packages by name, and the package's own torch-side modules by their dotted name (still bound by the layers).
LAZY = {
    "core.devices": {"torch"},
    "core.params": {"torchvision"},
    "models.codecs": {"torch"},
    "inference.export": {"onnx"},
    "inference.drawing": {"matplotlib"},
    "models.checkpoint": {"torch"},
    "inference.backends": {"onnxruntime", "torch"},
    "inference.predict": {"tqdm"},
    "inference.predictor": {"torch", "models.networks", "inference.export"},
}


def _modules():
    """{dotted name below the package: path} for every module of a layer."""
    out = {}
    for layer in LAYERS:
        for root, _, files in os.walk(os.path.join(PKG, layer)):
            for f in files:
                if f.endswith(".py"):
                    rel = os.path.relpath(os.path.join(root, f), PKG)[:-3].replace(os.sep, ".")
                    out[rel.removesuffix(".__init__")] = os.path.join(root, f)
    return out


def _own_target(name: str, node: ast.ImportFrom, alias: str, modules, is_package: bool = False) -> str | None:
    """The package module an ``ImportFrom`` names (``None`` for a third-party import); ``is_package``: ``name`` is a
    package's ``__init__`` (its relative imports start from the package itself)."""
    if node.level:
        parts = name.split(".")
        base = parts[: len(parts) - node.level + (1 if is_package else 0)]
        parts = base + (node.module.split(".") if node.module else [])
    elif node.module and node.module.split(".")[0] == "landmarks_lib":
        parts = node.module.split(".")[1:]
    else:
        return None
    cand = ".".join(parts + [alias])
    return cand if cand in modules else ".".join(parts)


def _imports(name, path, modules):
    """``(target, lineno, in_function, third_party_package)`` for every import of a module."""
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    parents = {c: p for p in ast.walk(tree) for c in ast.iter_child_nodes(p)}

    def in_function(n):
        while n in parents:
            n = parents[n]
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)):
                return True
        return False

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                own = a.name.split(".")[0] == "landmarks_lib"
                yield (".".join(a.name.split(".")[1:]) if own else None, node.lineno, in_function(node),
                       None if own else a.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom):
            for a in node.names:
                t = _own_target(name, node, a.name, modules, path.endswith("__init__.py"))
                yield t, node.lineno, in_function(node), None if t is not None else (node.module or "").split(".")[0]


def _layer(module: str) -> int:
    return LAYERS.index(module.split(".")[0])


def layer_problems():
    """Every import that breaks the layers, as ``file:line: what``; and the package's own import graph."""
    modules = _modules()
    problems, graph = [], {m: set() for m in modules}
    for name, path in sorted(modules.items()):
        rel = os.path.relpath(path, os.path.dirname(PKG))
        for target, line, lazy, third in _imports(name, path, modules):
            if target is None:
                if lazy and third not in LAZY.get(name, ()):
                    problems.append(f"{rel}:{line}: imports {third} inside a function (list it in LAZY, or import "
                                    f"it at the top)")
                continue
            if target == "" or target.split(".")[0] not in LAYERS:
                problems.append(f"{rel}:{line}: imports landmarks_lib.{target or '__init__'}, which is above every "
                                f"layer")
                continue
            if lazy and target not in LAZY.get(name, ()):
                problems.append(f"{rel}:{line}: imports landmarks_lib.{target} inside a function")
            if _layer(target) > _layer(name):
                problems.append(f"{rel}:{line}: {name} ({LAYERS[_layer(name)]}) imports {target} "
                                f"({LAYERS[_layer(target)]}), a later layer")
            if target in modules and target != name:
                graph[name].add(target)
    return problems, graph


def _cycle(graph):
    """One import cycle as a list of modules, or ``None``."""
    state = {}

    def visit(m, stack):
        state[m] = 1
        for t in sorted(graph.get(m, ())):
            if state.get(t) == 1:
                return stack[stack.index(t):] + [t]
            if not state.get(t):
                c = visit(t, stack + [t])
                if c:
                    return c
        state[m] = 2
        return None

    for m in sorted(graph):
        if not state.get(m):
            c = visit(m, [m])
            if c:
                return c
    return None


def test_every_import_respects_the_layers():
    problems, _ = layer_problems()
    assert not problems, "imports that break the layers " + " < ".join(LAYERS) + ":\n" + "\n".join(problems)


def test_the_package_has_no_import_cycle():
    _, graph = layer_problems()
    cycle = _cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_check_sees_a_broken_edge(tmp_path, monkeypatch):
    """The check itself: a core module importing a runs module, and a cycle, are both reported."""
    graph = {"core.a": {"runs.b"}, "runs.b": {"core.a"}}
    assert _cycle(graph) in (["core.a", "runs.b", "core.a"], ["runs.b", "core.a", "runs.b"])
    pkg = tmp_path / "landmarks_lib"
    (pkg / "core").mkdir(parents=True)
    (pkg / "runs").mkdir()
    (pkg / "core" / "a.py").write_text("from ..runs import b\n")
    (pkg / "runs" / "b.py").write_text("def f():\n    from ..core import a\n")
    monkeypatch.setattr(__import__(__name__), "PKG", str(pkg))
    problems, _ = layer_problems()
    assert any("core/a.py:1" in p and "a later layer" in p for p in problems), problems
    assert any("runs/b.py:2" in p and "inside a function" in p for p in problems), problems


@pytest.mark.parametrize("layer", LAYERS)
def test_each_layer_is_a_package(layer):
    assert os.path.isfile(os.path.join(PKG, layer, "__init__.py"))


def test_progress_goes_through_the_package_logger(capsys):
    """Status messages use the ``landmarks_lib`` logger: shown on stdout by ``logs.show``, quieted by its level."""
    import logging

    from landmarks_lib.core import logs

    log = logs.logger("landmarks_lib.training.engine")
    root = logging.getLogger(logs.NAME)
    level = root.level
    try:
        logs.show()
        log.info("epoch line")
        assert capsys.readouterr().out == "epoch line\n"
        root.setLevel(logging.WARNING)
        logs.show()  # a level the caller set is kept
        log.info("quiet")
        assert capsys.readouterr().out == ""
    finally:
        root.setLevel(level)
