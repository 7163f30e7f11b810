"""Packaging: pyproject.toml and environment.yml pin the same packages at the same exact versions; the Makefile,
CI script, README and licence agree with them."""

import os
import re
import stat
import sys

import pytest
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PIN = re.compile(r"^([A-Za-z0-9_.\-\[\]]+)==([A-Za-z0-9_.+\-]+)$")


def _read(name):
    with open(os.path.join(REPO, name), encoding="utf-8") as f:
        return f.read()


def _pins(lines, where):
    out = {}
    for line in lines:
        m = PIN.match(line.strip())
        assert m, f"{where}: {line!r} is not an exact pin (name==version)"
        name = m.group(1).lower().replace("_", "-")
        assert name not in out, f"{where}: {name} pinned twice"
        out[name] = m.group(2)
    return out


def pyproject_pins():
    if sys.version_info >= (3, 11):
        import tomllib

        with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
            project = tomllib.load(f)["project"]
        deps = project["dependencies"] + [d for group in project["optional-dependencies"].values() for d in group]
    else:  # pragma: no cover - Python 3.10
        deps = re.findall(r'^\s+"([^"]+)",?$', _read("pyproject.toml"), re.M)
    return _pins([d for d in deps if not d.startswith("thousand-landmarks[")], "pyproject.toml")


def test_the_core_group_predicts_without_the_training_stack():
    """``pip install .`` gets numpy, Pillow, onnxruntime and PyYAML only; ``[train]`` adds torch and the training
    stack, ``[notebooks]`` the notebook tools on top of it, ``[dev]`` the test and lint tools on top of that."""
    import tomllib

    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    core = {PIN.match(d).group(1) for d in project["dependencies"]}
    assert core == {"numpy", "pillow", "onnxruntime", "pyyaml"}
    groups = project["optional-dependencies"]
    assert "torch" in {PIN.match(d).group(1) for d in groups["train"]}
    assert "thousand-landmarks[train]" in groups["notebooks"] and "thousand-landmarks[notebooks]" in groups["dev"]
    assert project["scripts"]["landmarks"] == "landmarks_lib.cli:main"


def environment_pins():
    env = yaml.safe_load(_read("environment.yml"))
    pip = [d for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(pip) == 1, "environment.yml needs one pip: section"
    return _pins(pip[0]["pip"], "environment.yml")


def test_pyproject_and_environment_pin_the_same_versions():
    a, b = pyproject_pins(), environment_pins()
    assert a, "no dependencies in pyproject.toml"
    only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
    assert not only_a and not only_b, f"only in pyproject: {only_a}; only in environment.yml: {only_b}"
    diff = {k: (a[k], b[k]) for k in a if a[k] != b[k]}
    assert not diff, f"versions differ (pyproject, environment.yml): {diff}"


def test_makefile_installs_the_pinned_torch_first():
    pins = pyproject_pins()
    mk = _read("Makefile")
    assert f"torch=={pins['torch']} torchvision=={pins['torchvision']}" in mk
    assert "pip install -e . --no-deps" in mk
    assert "nbdime config-git --enable" in mk
    for target in ("demo", "test", "test-fast", "test-standin", "run", "sync-notebooks", "clean-cache", "git-nbdime"):
        assert re.search(rf"^{re.escape(target)}:", mk, re.M), f"Makefile lacks the {target} target"


def test_nbdime_git_drivers_are_absolute_paths_so_git_diff_works_without_the_venv_on_path():
    mk = _read("Makefile")
    for key in ("diff.jupyternotebook.command", "merge.jupyternotebook.driver", "difftool.nbdime.cmd",
                "mergetool.nbdime.cmd"):
        assert re.search(rf'git config {re.escape(key)} .*\$\(abspath \$\(VENV\)\)/bin/git-nb', mk), key


def test_ci_runs_the_readme_test_command():
    path = os.path.join(REPO, ".ci", "run")
    assert os.stat(path).st_mode & stat.S_IXUSR, ".ci/run must be executable"
    text = _read(".ci/run")
    assert text.startswith("#!/usr/bin/env bash") and "set -euo pipefail" in text
    assert text.strip().splitlines()[-1] == "make test"
    readme = _read("README.md")
    assert "make test" in readme and "make demo" in readme


@pytest.mark.parametrize("name", ["README.md", "LICENSE", "data/README.md", "ARCHITECTURE.md"])
def test_documents_exist(name):
    assert len(_read(name)) > 200


def test_license_is_mit():
    text = _read("LICENSE")
    assert text.startswith("MIT License") and "thousand-landmarks contributors" in text
