"""The flat parameter set: ``-p`` typing, unknown names, type errors, precedence, the profiles in ``params/``,
the pipeline's command-line resolution and the README's parameter table."""

import glob
import os

import pytest
import yaml

from landmarks_lib import params as lp
from landmarks_lib import pipeline, workflow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROFILES = sorted(glob.glob(os.path.join(REPO, "params", "*.yaml")))


@pytest.mark.parametrize("text, value, kind", [
    ("5", 5, int), ("-1", -1, int), ("1e-3", 1e-3, float), ("3e4", 3e4, float), ("0.25", 0.25, float),
    ("true", True, bool), ("false", False, bool), ("null", None, type(None)), ("resnet18", "resnet18", str),
    ("runs/demo", "runs/demo", str), ("cosine_restarts", "cosine_restarts", str),
])
def test_parse_scalar_types(text, value, kind):
    v = lp.parse_scalar(text)
    assert type(v) is kind and v == value


def test_overrides_are_typed_against_defaults():
    p = lp.resolve(None, [("epochs", "5"), ("lr", "1e-3"), ("pretrained", "false"), ("backbone", "resnet18"),
                          ("rotate_deg", "15"), ("epochs", "7")])
    assert p["epochs"] == 7 and type(p["epochs"]) is int  # the last -p wins
    assert p["lr"] == pytest.approx(1e-3) and type(p["lr"]) is float
    assert p["pretrained"] is False
    assert p["backbone"] == "resnet18"
    assert p["rotate_deg"] == 15.0 and type(p["rotate_deg"]) is float  # an int where a float is expected
    assert lp.resolve(None, [("epochs", "3.0")])["epochs"] == 3  # a whole float where an int is expected
    assert set(p) == set(lp.SPEC)


def test_unknown_name_lists_known_ones():
    with pytest.raises(lp.ParamError) as e:
        lp.resolve(None, [("epochz", "3")])
    msg = str(e.value)
    assert "epochz" in msg and "known" in msg
    assert all(name in msg for name in ("epochs", "lr", "backbone", "crop_mode"))
    with pytest.raises(lp.ParamError):
        lp.resolve(None, None, not_a_param=1)


@pytest.mark.parametrize("name, text", [("epochs", "many"), ("epochs", "2.5"), ("pretrained", "5"),
                                        ("pretrained", "yes please"), ("lr", "fast"), ("lr", "true")])
def test_type_errors(name, text):
    with pytest.raises(lp.ParamError) as e:
        lp.resolve(None, [(name, text)])
    assert name in str(e.value)


def test_precedence_defaults_profile_overrides_kwargs(tmp_path):
    prof = tmp_path / "p.yaml"
    prof.write_text("epochs: 3\nlr: 0.01\nbackbone: resnet34\n")
    p = lp.resolve(prof, [("epochs", "9")], backbone="resnet50")
    assert p["epochs"] == 9  # -p over the profile
    assert p["lr"] == 0.01  # the profile over the defaults
    assert p["backbone"] == "resnet50"  # keyword arguments over everything
    assert p["batch_size"] == lp.DEFAULTS["batch_size"]


def test_profile_with_unknown_name_is_refused(tmp_path):
    prof = tmp_path / "bad.yaml"
    prof.write_text("epochs: 3\nlearning_rate: 0.1\n")
    with pytest.raises(lp.ParamError, match="learning_rate"):
        lp.resolve(prof)


def test_dump_round_trip(tmp_path):
    p = lp.resolve(None, [("epochs", "4"), ("lr", "3e-4"), ("cache_dir", "null")])
    lp.dump(p, tmp_path / "params.yaml")
    back = yaml.safe_load((tmp_path / "params.yaml").read_text())
    assert back == p
    assert lp.resolve(tmp_path / "params.yaml") == p


def test_profiles_exist():
    names = {os.path.basename(p) for p in PROFILES}
    assert "demo.yaml" in names


@pytest.mark.parametrize("path", PROFILES, ids=[os.path.basename(p) for p in PROFILES])
def test_every_profile_loads_with_known_names(path):
    with open(path) as f:
        d = yaml.safe_load(f) or {}
    assert isinstance(d, dict)
    unknown = set(d) - set(lp.SPEC)
    assert not unknown, f"{path}: unknown parameters {sorted(unknown)}"
    p = lp.resolve(path)  # types check
    for k, v in d.items():
        assert p[k] == v or (isinstance(v, int) and p[k] == float(v)), k


def test_demo_profile_needs_no_download():
    p = lp.resolve(os.path.join(REPO, "params", "demo.yaml"))
    assert p["pretrained"] is False
    assert p["data_dir"] == ""  # the embedded synthetic data


def test_params_from_namespace_uses_values_as_they_are():
    ns = {"data_dir": "", "epochs": 3, "lr": 0.5, "run_dir": "runs/007", "unrelated": object()}
    p = workflow.params_from_namespace(ns)
    assert p["data_dir"] == "" and p["epochs"] == 3 and p["lr"] == 0.5 and p["run_dir"] == "runs/007"
    assert p["batch_size"] == lp.DEFAULTS["batch_size"]
    with pytest.raises(lp.ParamError):
        workflow.params_from_namespace({"epochs": "three"})


# ------------------------------------------------------------------------------------------- the runner's CLI
def test_pipeline_resolution_precedence_and_absolute_folders(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    prof = tmp_path / "prof.yaml"
    prof.write_text("epochs: 3\nrun_dir: from_profile\ndata_dir: data_from_profile\n")
    p = pipeline.resolve_params(str(prof), [("epochs", "5"), ("run_dir", "from_p"), ("lr", "1e-3")],
                                data_dir=None, run_dir="runs/x")
    assert p["epochs"] == 5 and p["lr"] == pytest.approx(1e-3)
    assert p["run_dir"] == str(tmp_path / "runs" / "x")  # --run-dir over -p over the profile, made absolute
    assert p["data_dir"] == str(tmp_path / "data_from_profile")
    assert pipeline.resolve_params(None, [], data_dir="", run_dir="r")["data_dir"] == ""  # synthetic default kept


def test_pipeline_cli_unknown_param_exits_2_listing_names(tmp_path, capsys):
    rc = pipeline.main(["--run-dir", str(tmp_path / "r"), "-p", "epochz", "3"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "epochz" in err and "epochs" in err and "known" in err
    assert not (tmp_path / "r").exists()  # nothing was written


def test_pipeline_cli_type_error_exits_2(tmp_path, capsys):
    rc = pipeline.main(["--run-dir", str(tmp_path / "r"), "-p", "epochs", "many"])
    assert rc == 2 and "epochs" in capsys.readouterr().err


def test_readme_lists_every_parameter():
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        text = f.read()
    missing = [k for k in lp.SPEC if f"`{k}`" not in text]
    assert not missing, f"README.md does not list the parameters {missing} (regenerate the table)"


def test_text_parameters_keep_the_text_as_typed():
    from landmarks_lib import params as P

    p = P.resolve(None, [("run_dir", "0123"), ("val_split", "yes"), ("ensemble_runs", "1e3"), ("epochs", "7")])
    assert p["run_dir"] == "0123" and p["val_split"] == "yes" and p["ensemble_runs"] == "1e3"
    assert p["epochs"] == 7
