"""The parameter spec and its one resolver: typing by the spec (YAML files and ``-p`` alike), checks at the start,
precedence, scopes, the profiles in ``params/``, the runner's command-line resolution and the generated table
(``docs/parameters.md``; ``tests/test_docs.py`` checks that the file holds it)."""

import glob
import os
import subprocess
import sys

import pytest

from landmarks_lib.core import params as lp
from landmarks_lib.runs import pipeline, workflow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROFILES = sorted(glob.glob(os.path.join(REPO, "params", "*.yaml")))


def test_every_parameter_has_a_scope_type_help_and_a_valid_default():
    for name, p in lp.SPEC.items():
        assert p.scope in lp.SCOPES, name
        assert p.kind in (bool, int, float, str) and p.help, name
        assert lp.coerce(name, p.default) == p.default  # the default passes its own checks
    assert set(lp.names_in(*lp.SCOPES)) == set(lp.SPEC)
    assert lp.SPEC["epochs"].scope == "train" and lp.SPEC["localizer_epochs"].scope == "localizer"
    assert lp.SPEC["tta_scales"].scope == "inference" and lp.SPEC["num_figures"].scope == "figures"
    assert lp.SPEC["threads"].scope == "runtime" and lp.SPEC["seed"].scope == "data"


def test_spec_defaults_equal_the_demo_profile():
    demo = lp.load_profile(os.path.join(REPO, "params", "demo.yaml"))
    assert demo, "demo.yaml is empty"
    assert {k: v for k, v in demo.items() if lp.DEFAULTS[k] != v} == {}


@pytest.mark.parametrize("name, text, value", [
    ("epochs", "5", 5), ("epochs", "3.0", 3), ("seed", "0123", 123), ("lr", "1e-3", 1e-3), ("lr", "3e4", 3e4),
    ("rotate_deg", "15", 15.0), ("pretrained", "true", True), ("pretrained", "no", False),
    ("run_dir", "007", "007"), ("cache_dir", "0123", "0123"), ("run_dir", "1:30", "1:30"), ("val_split", "random",
                                                                                            "random"),
])
def test_text_is_typed_by_the_spec(name, text, value):
    v = lp.coerce(name, text)
    assert v == value and type(v) is type(lp.DEFAULTS[name])


def test_yaml_profiles_are_typed_by_the_spec_not_by_yaml(tmp_path):
    prof = tmp_path / "p.yaml"
    prof.write_text("run_dir: 007\ncache_dir: 0123\nensemble_runs: 1:30\nlr: 1e-3\nepochs: 0012\npretrained: yes\n"
                    "data_dir:\n")
    p = lp.load_profile(prof)
    assert p == {"run_dir": "007", "cache_dir": "0123", "ensemble_runs": "1:30", "lr": 1e-3, "epochs": 12,
                 "pretrained": True, "data_dir": ""}


@pytest.mark.parametrize("name, value, words", [
    ("epochs", "many", "integer"), ("epochs", "2.5", "integer"), ("pretrained", "5", "true or false"),
    ("lr", "fast", "number"), ("submission_decimals", "-1", "range"), ("noise_action", "banana", "keep"),
    ("tta_scales", "abc", "not a number"), ("crop_mode", "square", "letterbox"), ("device", "gpu", "cuda"),
    ("backbone", "resnet19", "torchvision"), ("lr", "nan", "finite"), ("val_fraction", "1.5", "range"),
])
def test_bad_values_are_refused_with_the_name(name, value, words):
    with pytest.raises(lp.ParamError) as e:
        lp.resolve(overrides=[(name, value)])
    assert name in str(e.value) and words in str(e.value)


def test_profile_errors_name_the_file(tmp_path):
    prof = tmp_path / "p.yaml"
    for text, words in (("epoch: 3\n", "p.yaml: unknown parameter(s) 'epoch' (did you mean 'epochs'?)"),
                        ("scheduler: Cosine\n", "p.yaml: parameter 'scheduler' is 'Cosine'; choose one of"),
                        ("epochs: 3\nepochs: 5\n", "p.yaml:2: 'epochs' is given twice"),
                        ("lr: fast\n", "p.yaml: parameter 'lr' must be a number")):
        prof.write_text(text)
        with pytest.raises(lp.ParamError) as e:
            lp.resolve(profile=prof)
        assert words in str(e.value), str(e.value)
    prof.write_text("seed: 12345678901234567891\n")
    assert lp.resolve(profile=prof)["seed"] == 12345678901234567891  # whole numbers stay exact


def test_paths_that_must_exist_are_checked(tmp_path):
    with pytest.raises(lp.ParamError, match="no such folder"):
        lp.resolve(overrides={"data_dir": str(tmp_path / "missing")})
    assert lp.resolve(overrides={"data_dir": str(tmp_path)})["data_dir"] == str(tmp_path)  # format: checked on read
    with pytest.raises(lp.ParamError, match="ensemble_runs.*not a run folder"):
        lp.resolve(overrides={"ensemble_runs": str(tmp_path)})


def test_unknown_name_lists_known_ones():
    with pytest.raises(lp.ParamError) as e:
        lp.resolve(overrides=[("epochz", "3")])
    msg = str(e.value)
    assert "epochz" in msg and "known" in msg and all(n in msg for n in ("epochs", "lr", "backbone"))


def test_precedence_defaults_profile_run_params_overrides_folders(tmp_path):
    prof = tmp_path / "p.yaml"
    prof.write_text("epochs: 3\nlr: 0.01\nbackbone: resnet34\n")
    p = lp.resolve(profile=prof, overrides=[("epochs", "9"), ("epochs", "7")])
    assert (p["epochs"], p["lr"], p["backbone"], p["batch_size"]) == (7, 0.01, "resnet34", lp.DEFAULTS["batch_size"])
    run = tmp_path / "run"
    run.mkdir()
    lp.dump(dict(lp.DEFAULTS, epochs=5, lr=0.5), run / "params.yaml")
    p = lp.resolve(run_dir=run, profile=prof, overrides={"lr": 0.25})  # the run's params.yaml wins over a profile
    assert (p["epochs"], p["lr"], p["backbone"]) == (5, 0.25, "resnet18")
    assert p["run_dir"] == str(run)
    assert lp.resolve(run_dir=run, profile=prof, use_run_params=False)["epochs"] == 3


def test_dump_round_trip(tmp_path):
    p = lp.resolve(overrides={"run_dir": "007", "lr": 3e-4, "tta_scales": "0.9,1.0"})
    lp.dump(p, tmp_path / "params.yaml")
    assert lp.resolve(run_dir=p["run_dir"] and None, profile=tmp_path / "params.yaml") == p


@pytest.mark.parametrize("path", PROFILES, ids=os.path.basename)
def test_every_profile_resolves(path):
    p = lp.resolve(profile=path)
    assert set(p) == set(lp.SPEC)


def test_notebook_params_take_overrides_and_injected_names(tmp_path):
    ns = {"run_dir": str(tmp_path / "r"), "profile": "", "overrides": {"epochs": 3}, "lr": 0.5, "unrelated": 1}
    p = workflow.notebook_params(ns)
    assert p["epochs"] == 3 and p["lr"] == 0.5 and p["run_dir"] == str(tmp_path / "r")
    with pytest.raises(lp.ParamError):
        workflow.notebook_params({"overrides": {"epochs": "three"}})


def test_scoped_and_names_in():
    p = lp.resolve()
    sp = lp.scoped(p, "localizer")
    assert set(sp) == {k for k in lp.SPEC if k.startswith("localizer_")}
    with pytest.raises(lp.ParamError, match="unknown scope"):
        lp.names_in("training")


# ------------------------------------------------------------------------------------------- the runner's CLI
def test_pipeline_resolution_precedence_and_absolute_folders(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data_from_profile" / "train").mkdir(parents=True)
    (tmp_path / "data_from_profile" / "train" / "landmarks.csv").write_text("file_name\n")
    prof = tmp_path / "prof.yaml"
    prof.write_text("epochs: 3\nrun_dir: from_profile\ndata_dir: data_from_profile\n")
    p = pipeline.resolve_params(str(prof), [("epochs", "5"), ("run_dir", "from_p"), ("lr", "1e-3")],
                                data_dir=None, run_dir="runs/x")
    assert p["epochs"] == 5 and p["lr"] == pytest.approx(1e-3)
    assert p["run_dir"] == str(tmp_path / "runs" / "x")  # --run-dir over -p over the profile, made absolute
    assert p["data_dir"] == str(tmp_path / "data_from_profile")
    assert pipeline.resolve_params(None, [], data_dir="", run_dir="r")["data_dir"] == ""  # synthetic default kept


def test_parameters_doc_holds_the_generated_table():
    with open(os.path.join(REPO, "docs", "parameters.md"), encoding="utf-8") as f:
        text = f.read()
    table = lp.markdown_table()
    assert text.endswith(table + "\n"), "regenerate docs/parameters.md's table: landmarks params --markdown"
    rows = table.splitlines()[2:]
    assert [r.split(" | ")[0] for r in rows] == [f"| `{k}`" for k in lp.SPEC]  # one row per parameter, in order
    assert all(r.count(" | ") == 3 for r in rows)  # no '|' inside a cell


def test_params_module_lists_every_parameter():
    out = subprocess.run([sys.executable, "-m", "landmarks_lib.params"], capture_output=True, text=True,
                         check=True).stdout
    assert all(f"  {k} = " in out for k in lp.SPEC) and "[localizer]" in out and "[runtime]" in out
