"""Bad inputs and faults, each with its clear answer: tables the pipeline would fail on later (the validator reports
each first, a Problem with file and line, and every loader refuses it, a DataFormatError naming file, line and, for
a row, its file name), images over the pixel limit, too few rows, a model for another number of points, a full
disk, half-built caches, a dead kernel, and the runner's refusals (``--force`` on other people's folders, a second
runner, an out-of-sync notebook pair, bad parameters before any work). YAML typing by the spec (``0123``, ``007``,
``1:30``) is tested in ``test_params.py``.

Each test writes a tiny contest-format folder (``synthetic.write_dataset``) into ``tmp_path`` and breaks one thing.
"""

import os
import shutil

import pytest

from landmarks_lib.core import params as lp
from landmarks_lib.core.files import MARKER
from landmarks_lib.data.tables import DataFormatError, read_groups, read_landmarks, read_test_points
from landmarks_lib.data.validate import validate_dataset
from landmarks_lib.runs import pipeline
from landmarks_lib.runs.run_folder import RunFolder, RunFolderError

LM, TP, GR = "train/landmarks.csv", "test/test_points.csv", "train/groups.csv"


def edit_line(path, line, edit):
    """Replace line ``line`` (1-based, header = 1) of a tab-separated file by ``edit(fields)`` (a list of fields)."""
    lines = path.read_text().splitlines()
    lines[line - 1] = "\t".join(edit(lines[line - 1].split("\t")))
    path.write_text("\n".join(lines) + "\n")


def keep_header_only(path):
    path.write_text(path.read_text().splitlines()[0] + "\n")


def fatal(rep, kind):
    """The one fatal problem of the report, which must be of ``kind``."""
    ps = [p for p in rep.problems if p.severity == "fatal"]
    assert [p.kind for p in ps] == [kind], str(rep)
    return ps[0]


def assert_names_file_and_line(problem, rel, line):
    assert (problem.file, problem.line) == (rel, line)
    assert f"{rel}:{line}" in str(problem)


# ------------------------------------------------------------------------------------------------- file names
UNSAFE = ["sub/00001.jpg", "..\\00001.jpg", ".", "..", "C:00001.jpg", "/abs/00001.jpg", "C:\\x\\00001.jpg"]


def rename(name):
    return lambda fields: [name] + fields[1:]


@pytest.mark.parametrize("name", UNSAFE)
def test_unsafe_name_in_landmarks(ds, name):
    path = ds / LM
    edit_line(path, 3, rename(name))
    for bad_rows in ("error", "skip"):  # fatal and refused under both policies: never a row to drop quietly
        p = fatal(validate_dataset(ds, bad_rows=bad_rows), "unsafe_name")
        assert_names_file_and_line(p, LM, 3)
        assert repr(name) in p.message and "plain file name" in p.message
        with pytest.raises(DataFormatError) as e:
            read_landmarks(path, bad_rows=bad_rows)
        assert str(e.value).startswith(f"{path}: line 3 ({name}): file_name {name!r}")
        assert (e.value.problem.kind, e.value.problem.line) == ("unsafe_name", 3)


@pytest.mark.parametrize("name", UNSAFE)
def test_unsafe_name_in_test_points(ds, name):
    path = ds / TP
    edit_line(path, 2, rename(name))
    p = fatal(validate_dataset(ds), "unsafe_name")
    assert_names_file_and_line(p, TP, 2)
    assert repr(name) in p.message
    with pytest.raises(DataFormatError, match="plain file name") as e:
        read_test_points(path, num_points=15)
    assert str(e.value).startswith(f"{path}: line 2 ({name}): file_name {name!r}")


@pytest.mark.parametrize("name", UNSAFE)
def test_unsafe_name_in_groups(ds, name):
    path = ds / GR
    edit_line(path, 2, rename(name))
    rep = validate_dataset(ds)
    p = fatal(rep, "unsafe_name")
    assert_names_file_and_line(p, GR, 2)
    assert repr(name) in p.message
    with pytest.raises(DataFormatError, match="plain file name") as e:
        read_groups(path)
    assert str(e.value).startswith(f"{path}: line 2 ({name}): file_name {name!r}")


def test_unsafe_name_is_not_looked_up(ds, tmp_path):
    """An absolute name pointing at a real image outside the folder is refused, not opened."""
    outside = tmp_path / "outside.jpg"
    shutil.copy(ds / "train" / "images" / "00001.jpg", outside)
    edit_line(ds / LM, 3, rename(str(outside)))
    rep = validate_dataset(ds)
    assert_names_file_and_line(fatal(rep, "unsafe_name"), LM, 3)
    assert str(outside) not in set(rep.image_sizes["name"])


def test_symlinked_image_inside_the_folder_is_fine(ds, tmp_path):
    """A link to a file inside the data folder is followed (links out of it: tests/test_bad_run_inputs.py)."""
    store = ds / "store"
    store.mkdir()
    img = ds / "train" / "images" / "00001.jpg"
    shutil.move(img, store / "real.jpg")
    os.symlink(store / "real.jpg", img)
    rep = validate_dataset(ds)
    assert rep.ok, str(rep)
    assert "00001.jpg" in set(rep.image_sizes["name"])  # followed and read
    assert read_landmarks(ds / LM).names[1] == "00001.jpg"


# ------------------------------------------------------------------------------------------------- empty tables
def test_header_only_landmarks(ds):
    keep_header_only(ds / LM)
    p = fatal(validate_dataset(ds), "no_data_rows")
    assert_names_file_and_line(p, LM, 1)
    assert "header only" in p.message


def test_every_landmarks_row_dropped_under_skip(ds):
    for line in (2, 3, 4):
        edit_line(ds / LM, line, lambda f: f[:1] + ["NaN"] + f[2:])
    rep = validate_dataset(ds, bad_rows="skip")
    assert [p.line for p in rep.problems if p.kind == "bad_coordinates"] == [2, 3, 4]  # warnings: dropped rows
    p = fatal(rep, "no_data_rows")
    assert_names_file_and_line(p, LM, 1)
    assert "every row is bad" in p.message


def test_header_only_test_points(ds):
    keep_header_only(ds / TP)
    p = fatal(validate_dataset(ds), "no_data_rows")
    assert_names_file_and_line(p, TP, 1)
    assert "no test rows" in p.message


# ------------------------------------------------------------------------------------------------- coordinate range
@pytest.mark.parametrize("value", ["1e39", "-1e39", "40000", "32768", "-32769", "32767.5"])
def test_coordinate_outside_int16_storage(ds, value):
    """``1e39`` would overflow float32 to inf, ``40000`` does not fit the int16 labels: fatal, and refused."""
    path = ds / LM
    edit_line(path, 3, lambda f: f[:3] + [value] + f[4:])  # Point_1_X of the second row
    p = fatal(validate_dataset(ds), "coordinate_out_of_range")
    assert_names_file_and_line(p, LM, 3)
    assert "int16" in p.message and "Point_1_X" in p.message and repr(value) in p.message
    skip = validate_dataset(ds, bad_rows="skip")
    q = [q for q in skip.problems if q.kind == "coordinate_out_of_range"]
    assert [(q.severity, q.line) for q in q] == [("warning", 3)] and skip.num_train == 2
    with pytest.raises(DataFormatError) as e:
        read_landmarks(path)
    assert str(e.value).startswith(f"{path}: line 3 (00001.jpg): 1 coordinate(s) outside [-32768, 32767]")
    assert [s[:2] for s in read_landmarks(path, bad_rows="skip").skipped] == [(3, "00001.jpg")]


def test_int16_range_ends_are_not_out_of_range(ds):
    edit_line(ds / LM, 3, lambda f: f[:3] + ["32767", "-32768"] + f[5:])
    rep = validate_dataset(ds)
    assert rep.ok and not [p for p in rep.problems if p.kind == "coordinate_out_of_range"], str(rep)
    assert [p.kind for p in rep.problems if p.line == 3 and p.severity == "warning"] == ["points_far_outside"]


# ------------------------------------------------------------------------------------------------- the data's size
def test_one_training_row_is_too_few_for_a_split(ds):
    lines = (ds / LM).read_text().splitlines()
    (ds / LM).write_text("\n".join(lines[:2]) + "\n")
    assert_names_file_and_line(fatal(validate_dataset(ds), "too_few_rows"), LM, 1)
    from landmarks_lib.core import params as lp
    from landmarks_lib.training import engine

    p = lp.resolve(data_dir=str(ds), overrides={"cache_dir": str(ds / "cache"), "val_split": "random"})
    with pytest.raises(DataFormatError, match=r"landmarks.csv: 1 usable row\(s\) leave no image to train on"):
        engine.load_train_data(p, progress=False)


def _png_claiming(path, width, height):
    """A PNG whose header claims ``width x height`` (its pixel data is a 1x1 image's): enough for header checks."""
    import io
    import struct
    import zlib

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buf, format="PNG")
    b = bytearray(buf.getvalue())
    ihdr = bytes(b[16:29])
    ihdr = struct.pack(">II", width, height) + ihdr[8:]
    b[16:29] = ihdr
    b[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr) & 0xFFFFFFFF)
    path.write_bytes(bytes(b))


def test_an_image_over_the_pixel_limit_is_fatal_in_the_validator_and_refused_by_the_loader(ds):
    from landmarks_lib.core.images import ImageError, load_image

    name = read_landmarks(ds / LM).names[1]
    img = ds / "train" / "images" / name
    _png_claiming(img, 10_000, 10_000)  # 100 megapixels
    p = fatal(validate_dataset(ds), "image_too_large")
    assert p.file == f"train/images/{name}" and p.line == 3 and "100 megapixels" in p.message
    with pytest.raises(ImageError, match=rf"{name}: 10000x10000 px \(100 megapixels\) is over the 89-megapixel") as e:
        load_image(img)
    assert str(e.value) == f"{img}: {p.message}"  # the validator's words, with the path


def test_a_model_with_another_number_of_points_is_named_as_such(tmp_path):
    from landmarks_lib.core import params as lp
    from landmarks_lib.models import checkpoint
    from landmarks_lib.runs import workflow
    from landmarks_lib.runs.run_folder import RunFolder

    run = RunFolder(tmp_path / "run").create("test")
    checkpoint.save(run.model, {"kind": "model", "face": {"meta": {"num_points": 68}}, "localizer": None,
                                "inference": {}})
    p = lp.resolve(run_dir=run.path)
    assert len(workflow.ensemble_models(p, 68)) == 1
    with pytest.raises(checkpoint.CheckpointError, match=r"run: its model predicts 68 points per face; this data "
                                                         r"has 971"):
        workflow.ensemble_models(p, 971)


# ------------------------------------------------------------------------------------------------- faults
def test_a_full_disk_is_named_with_its_folder(tmp_path, monkeypatch):
    import errno

    import torch

    from landmarks_lib.core.files import atomic_write_json
    from landmarks_lib.models import checkpoint

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(OSError, match=f"no space left on {tmp_path}"):
        atomic_write_json(tmp_path / "m.json", {"a": 1})
    monkeypatch.undo()
    assert os.listdir(tmp_path) == []  # the temporary file is gone

    def torch_full(*a, **k):
        raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 64 vs 0")

    monkeypatch.setattr(torch, "save", torch_full)
    with pytest.raises(OSError, match=f"no space left on {tmp_path}"):
        checkpoint.save(tmp_path / "x.pt", {"kind": "stage"})


def test_half_built_caches_are_removed_only_when_their_builder_is_gone(tmp_path):
    from landmarks_lib.data import cache

    dead = tmp_path / ".crops-abc.999999999.x1"
    mine = tmp_path / f".crops-abc.{os.getpid()}.x2"
    other = tmp_path / "crops-def"
    for d in (dead, mine, other):
        d.mkdir()
    assert cache.remove_orphans(tmp_path) == [str(dead)]
    assert sorted(os.listdir(tmp_path)) == sorted([mine.name, other.name])


@pytest.mark.notebooks
def test_a_dead_kernel_is_named_and_its_report_written(tmp_path, monkeypatch):
    import nbformat

    from landmarks_lib.runs import pipeline
    from landmarks_lib.runs.run_folder import RunFolder

    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                           "language": "python"}})
    nb.cells = [nbformat.v4.new_code_cell('run_dir = "x"', metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)")]
    nbformat.write(nb, tmp_path / "01_eda.ipynb")
    monkeypatch.setattr(pipeline, "NOTEBOOK_DIR", str(tmp_path))
    run = RunFolder(tmp_path / "run").create("test")
    with pytest.raises(pipeline.NotebookFailed, match="notebook 01_eda: kernel died .*out of memory"):
        pipeline.run_notebook("01_eda", run, quiet=True)
    assert (tmp_path / "run" / "reports" / "01_eda.html").exists()
    assert (tmp_path / "run" / "notebooks" / "01_eda.ipynb").exists()


# ------------------------------------------------------------------------------------------------- the runner

def test_force_only_on_marked_folders_and_only_the_manifest(tmp_path, capsys):
    other = tmp_path / "dvc-project"
    (other / "src").mkdir(parents=True)
    (other / "params.yaml").write_text("epochs: 1\n")
    for force in (True, False):
        with pytest.raises(pipeline.PipelineError, match="not a run folder"):
            pipeline.prepare_run(lp.resolve(run_dir=other, use_run_params=False), force=force)
    assert (other / "src").exists() and (other / "params.yaml").exists()
    run = RunFolder(tmp_path / "run").create("test")
    r = tmp_path / "run"
    for name in ("metrics.json", "notes.txt", ".params.yaml.ab12cd34.tmp", "checkpoints/train_best.pt",
                 "checkpoints/my_backup.pt", "figures/04_ced.png", "figures/my_plot.png", "figures/.x.tmp"):
        (r / name).parent.mkdir(exist_ok=True)
        (r / name).write_text("x")
    (r / "mydata").mkdir()
    pipeline.prepare_run(lp.resolve(run_dir=run.path), force=True, log=print)
    out = capsys.readouterr().out
    left = sorted(str(p.relative_to(r)) for p in r.rglob("*"))
    assert left == [".lock", MARKER, "checkpoints", "checkpoints/my_backup.pt", "figures", "figures/.x.tmp",
                    "figures/my_plot.png", "mydata", "notes.txt"]  # only the project's own files went
    # removed: 3 files (and the stale temporary file, when the lock was taken); kept, and listed: the user's files
    assert "removed 3 file(s)" in out and "kept" in out and "my_backup.pt" in out and "notes.txt" in out


def test_retrain_goes_with_resume(tmp_path, capsys):
    assert pipeline.main(["--run-dir", str(tmp_path / "r"), "--retrain"]) == 2
    assert "--retrain goes with --resume" in capsys.readouterr().err and not (tmp_path / "r").exists()


def test_notebook_kernels_share_the_lock_and_keep_runners_out(tmp_path, monkeypatch):
    from landmarks_lib.runs import workflow

    monkeypatch.delenv("LANDMARKS_RUN_LOCK", raising=False)
    ns = {"run_dir": str(tmp_path / "r"), "overrides": {"synthetic_train": 8, "synthetic_test": 2,
                                                        "synthetic_points": 15}}
    _, nb1 = workflow.start("01_eda", ns)
    nb2 = RunFolder(tmp_path / "r").lock("04_visualize", shared=True)  # a second notebook opened on the run
    with pytest.raises(RunFolderError, match="notebook kernel"):
        RunFolder(tmp_path / "r").lock("landmarks_lib.pipeline")
    nb1.unlock()
    nb2.unlock()
    RunFolder(tmp_path / "r").lock("landmarks_lib.pipeline").unlock()


def test_a_second_runner_is_refused_with_the_first_ones_pid(tmp_path):
    a = RunFolder(tmp_path / "r").create("test").lock("first")
    with pytest.raises(RunFolderError, match=f"pid {os.getpid()} first"):
        RunFolder(tmp_path / "r").lock("second")
    with pytest.raises(RunFolderError):
        RunFolder(tmp_path / "r").lock("a notebook", shared=True)
    a.unlock()
    RunFolder(tmp_path / "r").lock("second").unlock()


def test_lock_removes_stale_temporary_files(tmp_path):
    run = RunFolder(tmp_path / "r").create("test")
    os.makedirs(run.file("checkpoints"))
    stale = os.path.join(run.file("checkpoints"), ".train_last.pt.abc12_de.tmp")
    open(stale, "w").close()
    run.lock()
    assert not os.path.exists(stale)
    run.unlock()


def test_an_out_of_sync_notebook_pair_is_refused(tmp_path, monkeypatch):
    for ext in (".py", ".ipynb"):
        shutil.copy(os.path.join(pipeline.NOTEBOOK_DIR, "04_visualize" + ext), tmp_path)
    monkeypatch.setattr(pipeline, "NOTEBOOK_DIR", str(tmp_path))
    pipeline.check_pair("04_visualize")
    with open(tmp_path / "04_visualize.py", "a") as f:
        f.write("\n# %%\nprint('edited')\n")
    with pytest.raises(pipeline.PipelineError, match="make sync-notebooks"):
        pipeline.check_pair("04_visualize")


@pytest.mark.parametrize("args, words", [(["-p", "epochz", "3"], "known"), (["-p", "epochs", "many"], "epochs"),
                                         (["-p", "submission_decimals", "-1"], "range"),
                                         (["-p", "tta_scales", "abc"], "tta_scales"),
                                         (["--params", "missing.yaml"], "not found")])
def test_pipeline_cli_bad_parameters_exit_2_before_any_work(tmp_path, capsys, args, words):
    rc = pipeline.main(["--run-dir", str(tmp_path / "r"), *args])
    assert rc == 2 and words in capsys.readouterr().err
    assert not (tmp_path / "r").exists()  # nothing was written
