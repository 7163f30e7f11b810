"""Never write outside: run folders and data folders received as they are (tar, rsync), with links, foreign files,
temporary files of other processes and broken markers, each with its one-line answer.

1. No write, read-back or removal outside the run folder through a link: ``.lock`` is opened without following links
   (a symbolic or hard link is refused, its target untouched); a symbolic link in place of one of the run folder's
   own folders (``checkpoints/``, ``data/``, ...) or own files is refused with one line.
2. ``--force`` (``RunFolder.clear``) removes only the files the project writes, at the depth it writes them, never
   follows links, and lists every file it keeps.
3. Temporary files belong to their writer (``.<name>.<pid>.<random>.tmp``): a runner taking the lock removes only
   those whose writer has ended (and those of earlier versions, without a pid).
4. The crop cache is keyed by what changes its crops: the resolved image folder and each image's real path, size,
   times and inode, not the path typed.
5. Tables and images that are symbolic links resolving outside the data folder: reported by the validator, refused
   by the loaders, unless ``allow_links_outside``.
6. A malformed run marker, and a lock record naming a process that has ended, get one line saying so.
"""

import builtins
import fcntl
import json
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

import landmarks_lib
from landmarks_lib.core import params as lp
from landmarks_lib.core.files import MARKER, atomic_open
from landmarks_lib.core.images import ImageError
from landmarks_lib.data import cache, synthetic
from landmarks_lib.data.tables import DataFormatError, read_groups, read_landmarks, read_test_points
from landmarks_lib.data.validate import validate_dataset
from landmarks_lib.runs import pipeline
from landmarks_lib.runs.run_folder import FORMAT, RunFolder, RunFolderError

FOLDERS = ("checkpoints", "figures", "notebooks", "reports", "export", "data")
LM, TP, GR = "train/landmarks.csv", "test/test_points.csv", "train/groups.csv"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(landmarks_lib.__file__)))


@pytest.fixture(autouse=True)
def _no_inherited_lock(monkeypatch):
    monkeypatch.delenv("LANDMARKS_RUN_LOCK", raising=False)


def one_line(e) -> str:
    text = str(e.value if hasattr(e, "value") else e)
    assert "\n" not in text.strip(), text
    return text


def new_run(tmp_path, name="run") -> RunFolder:
    return RunFolder(tmp_path / name).create("test")


def params_for(run) -> dict:
    return lp.resolve(run_dir=run.path if hasattr(run, "path") else run, use_run_params=False)


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


@pytest.fixture
def live_pid():
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield p.pid
    p.kill()
    p.wait()


@pytest.fixture
def no_notebooks(monkeypatch):
    """The runner's notebooks replaced by a stub: a refusal must come before them; a run that got past it is seen."""
    ran = []
    monkeypatch.setattr(pipeline, "run_notebook", lambda name, *a, **k: ran.append(name) or 0.0)
    return ran


# ------------------------------------------------------------------------------------------------- 1. links
def test_a_lock_file_that_is_a_symlink_is_refused_and_its_target_untouched(tmp_path, no_notebooks, capsys):
    victim = tmp_path / "elsewhere" / "precious.txt"
    victim.parent.mkdir()
    victim.write_text("precious\n")
    run = new_run(tmp_path)
    os.symlink(victim, run.file(".lock"))
    with pytest.raises(RunFolderError, match="symbolic link") as e:
        RunFolder(run.path).lock("landmarks_lib.pipeline")
    assert run.file(".lock") in one_line(e)
    with pytest.raises(RunFolderError, match="symbolic link"):
        pipeline.prepare_run(params_for(run), resume=True)
    assert pipeline.main(["--run-dir", run.path, "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and ".lock" in err
    assert victim.read_text() == "precious\n" and no_notebooks == []  # not truncated, not written, no work done
    assert os.path.islink(run.file(".lock"))  # not removed either: the project did not make it


def test_a_dangling_lock_link_creates_nothing_outside(tmp_path):
    target = tmp_path / "elsewhere" / "created.txt"
    target.parent.mkdir()
    run = new_run(tmp_path)
    os.symlink(target, run.file(".lock"))
    with pytest.raises(RunFolderError, match="symbolic link"):
        run.lock()
    assert not target.exists()


def test_a_lock_file_hard_linked_to_another_file_is_refused(tmp_path):
    victim = tmp_path / "precious.txt"
    victim.write_text("precious\n")
    run = new_run(tmp_path)
    os.link(victim, run.file(".lock"))
    with pytest.raises(RunFolderError, match="hard link") as e:
        run.lock("landmarks_lib.pipeline")
    one_line(e)
    assert victim.read_text() == "precious\n"


@pytest.mark.parametrize("folder", FOLDERS)
def test_a_run_folders_own_folder_that_is_a_symlink_is_refused(tmp_path, folder, no_notebooks, capsys):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "train_best.pt").write_text("stale")
    (outside / "01_eda.ipynb").write_text("theirs")
    run = new_run(tmp_path)
    os.symlink(outside, os.path.join(run.path, folder))
    with pytest.raises(RunFolderError, match="symbolic link") as e:
        run.file(folder)
    assert os.path.join(run.path, folder) in one_line(e) and str(outside) in str(e.value)
    for force in (True, False):
        with pytest.raises(RunFolderError, match="symbolic link"):
            pipeline.prepare_run(params_for(run), force=force, resume=not force)
    with pytest.raises(RunFolderError, match="symbolic link"):
        RunFolder(run.path).create("notebook 01_eda")
    assert pipeline.main(["--run-dir", run.path, "--force"]) == 2
    assert capsys.readouterr().err.count("\n") == 1 and no_notebooks == []
    assert sorted(os.listdir(outside)) == ["01_eda.ipynb", "train_best.pt"]
    assert (outside / "train_best.pt").read_text() == "stale"  # not removed, not read as this run's
    assert not os.path.exists(run.file(".lock"))  # refused before anything was written


def test_force_neither_reads_nor_writes_checkpoints_through_a_linked_folder(tmp_path):
    """The reported case: a run folder whose checkpoints/ is a link; --force used to "start over" while the new run
    wrote into, and resumed from, the folder the link points to."""
    outside = tmp_path / "old-experiment" / "checkpoints"
    outside.mkdir(parents=True)
    (outside / "train_best.pt").write_text("stale")
    run = new_run(tmp_path)
    os.symlink(outside, os.path.join(run.path, "checkpoints"))
    with pytest.raises(RunFolderError):
        pipeline.prepare_run(params_for(run), force=True)
    with pytest.raises(RunFolderError):
        run.checkpoint("train")
    assert os.listdir(outside) == ["train_best.pt"] and (outside / "train_best.pt").read_text() == "stale"


@pytest.mark.parametrize("name", ["checkpoints/train_best.pt", "model.pt", "params.yaml",
                                  "notebooks/.02_train.running.ipynb", MARKER])
def test_an_own_file_that_is_a_symlink_is_refused(tmp_path, name):
    target = tmp_path / "elsewhere.txt"
    target.write_text(json.dumps({"format": FORMAT, "manifest": []}) if name == MARKER else "theirs")
    run = new_run(tmp_path)
    path = os.path.join(run.path, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if name == MARKER:
        os.remove(path)
    os.symlink(target, path)
    for attempt in (lambda: RunFolder(run.path).create("test"), lambda: RunFolder(run.path).lock(),
                    lambda: pipeline.prepare_run(params_for(run), force=True)):
        with pytest.raises(RunFolderError, match="symbolic link") as e:
            attempt()
        assert path in one_line(e)
    assert os.path.islink(path) and target.read_text().startswith(("theirs", "{"))


# ------------------------------------------------------------------------------------------------- 2. --force
def test_force_removes_own_files_only_at_their_depth_and_lists_the_rest(tmp_path, capsys):
    new_run(tmp_path)
    r = tmp_path / "run"
    outside = tmp_path / "outside"
    outside.mkdir()
    for n in ("train_best.pt", "metrics.json"):
        (outside / n).write_text("theirs")
    ours = ["metrics.json", "model.pt", "checkpoints/train_best.pt", "checkpoints/localizer_last.pt",
            "figures/04_ced.png", "export/model.json", "notebooks/01_eda.ipynb", "reports/01_eda.html"]
    nested = ["checkpoints/sub/x_best.pt", "figures/old/01_a.png", "export/v1/model.json", "reports/x/01_a.html",
              "notebooks/a/01_b.ipynb", "checkpoints/sub/.y.pt.abcd1234.tmp"]
    foreign = ["notes.txt", "checkpoints/my_backup.pt", "mydata/metrics.json"]
    for n in ours + nested + foreign:
        (r / n).parent.mkdir(parents=True, exist_ok=True)
        (r / n).write_text("x")
    (r / "checkpoints" / "empty").mkdir()
    os.symlink(outside, r / "old_run")  # a link to a folder holding files of our names
    os.symlink(outside, r / "checkpoints" / "old")
    os.symlink(outside / "metrics.json", r / "notes.lnk")
    removed = RunFolder(r).clear(log=print)
    out = capsys.readouterr().out
    assert sorted(os.path.relpath(p, r) for p in removed) == sorted(ours)
    for n in nested + foreign + ["old_run", "checkpoints/old", "notes.lnk"]:
        assert os.path.lexists(r / n), n
        assert f"kept {r / n} (" in out, n  # every file kept is listed
    assert (r / "checkpoints" / "empty").is_dir()  # a folder the project did not make stays
    assert "symbolic link" in out and sorted(os.listdir(outside)) == ["metrics.json", "train_best.pt"]
    assert all((outside / n).read_text() == "theirs" for n in os.listdir(outside))


def test_force_removes_the_embedded_dataset_only_at_the_depth_it_is_written(tmp_path, capsys):
    run = new_run(tmp_path)
    synthetic.write_dataset(run.file("data"), n_train=2, n_test=1, num_points=15, min_size=32, max_size=40)
    d = tmp_path / "run" / "data"
    (d / "notes").mkdir()
    (d / "notes" / "readme.txt").write_text("mine")
    (d / "train" / "images" / "extra").mkdir()
    (d / "train" / "images" / "extra" / "a.jpg").write_text("mine")
    (d / "train" / "images" / "mine.png").write_text("mine")
    run.clear(log=print)
    left = sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.is_file())
    assert left == ["notes/readme.txt", "train/images/extra/a.jpg", "train/images/mine.png"]
    out = capsys.readouterr().out
    assert all(f"kept {d / n}" in out for n in left)


# ------------------------------------------------------------------------------------------------- 3. temporaries
def test_atomic_open_names_its_temporary_file_after_the_writer(tmp_path):
    with atomic_open(tmp_path / "x.json") as f:
        f.write("{}")
        (name,) = os.listdir(tmp_path)
    assert re.fullmatch(rf"\.x\.json\.{os.getpid()}\.[a-z0-9_]{{8}}\.tmp", name), name
    from landmarks_lib.core.files import tmp_writer

    assert tmp_writer(name) == os.getpid()
    assert tmp_writer(".x.json.abcd1234.tmp") == 0 and tmp_writer("x.json") is None
    assert os.listdir(tmp_path) == ["x.json"]


def test_the_lock_removes_only_temporaries_whose_writer_has_ended(tmp_path, live_pid):
    run = new_run(tmp_path)
    r = tmp_path / "run"
    dead = dead_pid()
    files = {f"checkpoints/.train_last.pt.{live_pid}.abcd1234.tmp": True,
             f".metrics.json.{live_pid}.abcd1234.tmp": True,
             f"export/.face.onnx.{dead}.k2j4h5g6.tmp": False,
             f".metrics.json.{dead}.zz11yy22.tmp": False,
             "figures/.01_a.png.abcdefgh.tmp": False,  # an earlier version's name (no pid): stale
             f"mydata/.x.{dead}.abcd1234.tmp": True}  # not where the project writes: not ours
    for n in files:
        (r / n).parent.mkdir(exist_ok=True)
        (r / n).write_text("x")
    run.lock("landmarks_lib.pipeline")
    run.unlock()
    assert {n: (r / n).exists() for n in files} == files


def test_a_runner_starting_keeps_the_temporary_file_a_predict_is_writing(tmp_path):
    """The reported case: a runner took the lock while a predict wrote into the run folder, and removed its
    temporary file, so the predict's work was lost at its very end."""
    run = new_run(tmp_path)
    ready, go, out = tmp_path / "ready", tmp_path / "go", tmp_path / "run" / "test_faces.csv"
    code = ("import os, sys, time\n"
            "from landmarks_lib.core.files import atomic_open\n"
            f"with atomic_open({str(out)!r}) as f:\n"
            "    f.write('file_name\\n')\n"
            f"    open({str(ready)!r}, 'w').close()\n"
            f"    while not os.path.exists({str(go)!r}):\n"
            "        time.sleep(0.02)\n")
    env = dict(os.environ, PYTHONPATH=REPO)
    writer = subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.PIPE, text=True)
    try:
        t0 = time.time()
        while not ready.exists() and writer.poll() is None and time.time() - t0 < 60:
            time.sleep(0.02)
        assert ready.exists(), writer.stderr.read() if writer.poll() is not None else "writer did not start"
        RunFolder(run.path).lock("landmarks_lib.pipeline").unlock()
        go.touch()
        assert writer.wait(60) == 0, writer.stderr.read()
    finally:
        writer.kill()
        writer.wait()
    assert out.read_text() == "file_name\n"


def test_force_keeps_and_names_a_live_writers_temporary_file(tmp_path, live_pid, capsys):
    run = new_run(tmp_path)
    tmp = tmp_path / "run" / f".submission.csv.{live_pid}.abcd1234.tmp"
    tmp.write_text("x")
    run.clear(log=print)
    assert tmp.exists() and f"being written by process {live_pid}" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------- 4. cache key
def _bmp_dataset(root, seed):
    """Two same-named BMP images (fixed file size for a given image size) of ``seed``'s pixels, with fixed times."""
    d = root / "train" / "images"
    d.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for n in ("a.bmp", "b.bmp"):
        Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(d / n)
        os.utime(d / n, ns=(10 ** 18, 10 ** 18))
    return d


def _point(link, target):
    tmp = str(link) + ".new"
    os.symlink(target, tmp)
    os.replace(tmp, link)


def test_cache_key_follows_a_repointed_data_folder(tmp_path):
    a, b = _bmp_dataset(tmp_path / "A", 1), _bmp_dataset(tmp_path / "B", 2)
    assert [os.stat(a / n).st_size for n in ("a.bmp", "b.bmp")] == [os.stat(b / n).st_size for n in ("a.bmp", "b.bmp")]
    data = tmp_path / "data"
    _point(data, tmp_path / "A")
    images = data / "train" / "images"
    names = ["a.bmp", "b.bmp"]
    k1 = cache.cache_key(images, names, "letterbox", 16, 0.0, 1.25)
    assert k1 == cache.cache_key(str(images) + "/.", names, "letterbox", 16, 0.0, 1.25)  # same data, same key
    c1 = cache.get_cache(images, names, "letterbox", 16, tmp_path / "c", num_workers=1, progress=False)
    _point(data, tmp_path / "B")  # the same path typed, another dataset behind it
    assert cache.cache_key(images, names, "letterbox", 16, 0.0, 1.25) != k1
    c2 = cache.get_cache(images, names, "letterbox", 16, tmp_path / "c", num_workers=1, progress=False)
    assert c2.path != c1.path
    direct = cache.get_cache(b, names, "letterbox", 16, tmp_path / "c2", num_workers=1, progress=False)
    np.testing.assert_array_equal(c2.images, direct.images)
    assert not np.array_equal(c1.images, c2.images)


def test_cache_key_changes_when_a_file_is_replaced_with_the_same_name_size_and_time(tmp_path):
    d = _bmp_dataset(tmp_path / "data", 1)
    names = ["a.bmp", "b.bmp"]
    k0 = cache.cache_key(d, names, "center", 16, 0.0, 1.25)
    assert cache.cache_key(d, names, "center", 16, 0.0, 1.25) == k0
    # a new file renamed over the old one (another inode), times set back
    Image.fromarray(np.zeros((20, 24, 3), np.uint8)).save(tmp_path / "new.bmp")
    os.utime(tmp_path / "new.bmp", ns=(10 ** 18, 10 ** 18))
    os.replace(tmp_path / "new.bmp", d / "a.bmp")
    k1 = cache.cache_key(d, names, "center", 16, 0.0, 1.25)
    assert k1 != k0
    # the same file rewritten in place (same inode, size and time): its change time moves
    time.sleep(0.01)
    with open(d / "b.bmp", "r+b") as f:
        f.seek(-3, os.SEEK_END)
        f.write(b"\x01\x02\x03")
    os.utime(d / "b.bmp", ns=(10 ** 18, 10 ** 18))
    assert cache.cache_key(d, names, "center", 16, 0.0, 1.25) != k1


def test_cache_key_costs_one_stat_per_image_and_reads_nothing(tmp_path, monkeypatch):
    d = tmp_path / "data" / "train" / "images"
    d.mkdir(parents=True)
    names = [f"{i:05d}.jpg" for i in range(300)]
    for n in names:
        (d / n).write_bytes(b"x")
    calls = {"stat": 0, "open": 0}
    real_lstat, real_stat, real_open = os.lstat, os.stat, builtins.open

    def count(fn, key):
        def wrapped(*a, **k):
            calls[key] += 1
            return fn(*a, **k)
        return wrapped

    monkeypatch.setattr(os, "lstat", count(real_lstat, "stat"))
    monkeypatch.setattr(os, "stat", count(real_stat, "stat"))
    monkeypatch.setattr(builtins, "open", count(real_open, "open"))
    cache.cache_key(d, names, "center", 16, 0.0, 1.25)
    monkeypatch.undo()
    assert calls["open"] == 0 and calls["stat"] <= len(names) + 20, calls


# ------------------------------------------------------------------------------------------------- 5. data links
def _move_out(path, store):
    """Move ``path`` to ``store`` and leave a symbolic link to it in its place."""
    store.mkdir(exist_ok=True)
    target = store / os.path.basename(path)
    os.replace(path, target)
    os.symlink(target, path)
    return target


def test_an_image_linked_outside_the_data_folder_is_reported_and_refused(ds, tmp_path):
    table = read_landmarks(ds / LM)
    name = table.names[1]
    line = int(table.lines[1])
    target = _move_out(ds / "train" / "images" / name, tmp_path / "store")
    rep = validate_dataset(ds)
    bad = [p for p in rep.problems if p.severity == "fatal"]
    assert [(p.kind, p.file, p.line) for p in bad] == [("link_outside", f"train/images/{name}", line)], str(rep)
    assert str(target) in bad[0].message and "allow_links_outside" in bad[0].message
    assert f"train/images/{name} (train/landmarks.csv:{line})" in str(bad[0])
    images = ds / "train" / "images"
    with pytest.raises(ImageError, match="outside the data folder") as e:
        cache.get_cache(images, table.names, "letterbox", 16, tmp_path / "c", num_workers=1, progress=False)
    assert one_line(e).startswith(f"{images / name}: a symbolic link to {target}")
    assert not os.path.exists(tmp_path / "c") or not any(n.startswith("crops-") for n in os.listdir(tmp_path / "c"))
    # allowed: read, and the report says so (info)
    rep = validate_dataset(ds, allow_links_outside=True)
    assert rep.ok and name in set(rep.image_sizes["name"]), str(rep)
    assert [p.kind for p in rep.problems if p.file == f"train/images/{name}"] == ["link_outside_allowed"]
    c = cache.get_cache(images, table.names, "letterbox", 16, tmp_path / "c", num_workers=1, progress=False,
                        allow_links_outside=True)
    assert len(c) == len(table.names)


@pytest.mark.parametrize("rel", [LM, TP, GR])
def test_a_table_linked_outside_the_data_folder_is_reported_and_refused(ds, tmp_path, rel):
    target = _move_out(ds / rel, tmp_path / "store")
    rep = validate_dataset(ds)
    kinds = [(p.kind, p.file) for p in rep.problems if p.severity == "fatal"]
    assert ("link_outside", rel) in kinds, str(rep)
    read = {LM: read_landmarks, TP: read_test_points, GR: read_groups}[rel]
    with pytest.raises(DataFormatError, match="outside the data folder") as e:
        read(ds / rel)
    assert one_line(e).startswith(f"{ds / rel}: a symbolic link to {target}")
    assert e.value.problem.kind == "link_outside"
    assert len(read(ds / rel, allow_links_outside=True)) > 0
    assert validate_dataset(ds, allow_links_outside=True).ok


def test_links_inside_the_data_folder_and_a_linked_images_folder_are_fine(ds, tmp_path):
    table = read_landmarks(ds / LM)
    _move_out(ds / "train" / "images" / table.names[0], ds / "store")  # a link, resolving inside the data folder
    elsewhere = tmp_path / "disk" / "images"
    os.makedirs(elsewhere.parent)
    os.replace(ds / "test" / "images", elsewhere)
    os.symlink(elsewhere, ds / "test" / "images")  # the images folder itself on another disk: fine
    rep = validate_dataset(ds)
    assert rep.ok and not [p for p in rep.problems if "link" in p.kind], str(rep)
    c = cache.get_cache(ds / "train" / "images", table.names, "letterbox", 16, tmp_path / "c", num_workers=1,
                        progress=False)
    assert len(c) == len(table.names)


# ------------------------------------------------------------------------------------------------- 6. messages
BAD_MARKERS = ["{not json", "[]", json.dumps({"format": "thousand-landmarks-run/9", "manifest": []}),
               json.dumps({"manifest": []}), json.dumps({"format": FORMAT}),
               json.dumps({"format": FORMAT, "manifest": "params.yaml"}),
               json.dumps({"format": FORMAT, "manifest": [], "created_by": 3})]


@pytest.mark.parametrize("text", BAD_MARKERS)
def test_a_malformed_run_marker_gets_one_line(tmp_path, text, no_notebooks, capsys):
    r = tmp_path / "run"
    r.mkdir()
    (r / MARKER).write_text(text)
    (r / "metrics.json").write_text("{}")
    with pytest.raises(RunFolderError, match="malformed run marker") as e:
        RunFolder(r).manifest()
    assert one_line(e).startswith(f"{r / MARKER}: malformed run marker (")
    for kw in ({"resume": True}, {"force": True}):
        with pytest.raises(RunFolderError, match="malformed run marker"):
            pipeline.prepare_run(params_for(r), **kw)
    with pytest.raises(RunFolderError, match="malformed run marker"):
        RunFolder(r).create("notebook 01_eda")
    assert pipeline.main(["--run-dir", str(r), "--force"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {r / MARKER}: malformed run marker") and err.count("\n") == 1
    assert sorted(os.listdir(r)) == [MARKER, "metrics.json"] and no_notebooks == []  # nothing touched


def test_a_lock_record_naming_an_ended_process_is_called_stale(tmp_path):
    run = new_run(tmp_path)
    pid = dead_pid()
    with open(run.file(".lock"), "w") as f:
        f.write(f"pid {pid} landmarks_lib.pipeline")
    holder = os.open(run.file(".lock"), os.O_RDONLY)  # a notebook kernel (or a process left behind) holds it
    try:
        fcntl.flock(holder, fcntl.LOCK_SH)
        with pytest.raises(RunFolderError) as e:
            RunFolder(run.path).lock("landmarks_lib.pipeline")
        msg = one_line(e)
        assert "stale" in msg and f"pid {pid}" in msg and "not running" in msg
        assert f"({f'pid {pid}'} landmarks_lib.pipeline, or" not in msg  # not named as the active holder
    finally:
        os.close(holder)
    RunFolder(run.path).lock("landmarks_lib.pipeline").unlock()  # free again once the holder is gone


def test_quiet_runs_start_their_kernels_without_the_transport_warning(tmp_path, monkeypatch):
    """``--quiet`` hides the notebooks' output, and the kernel's own warnings with it (papermill gets the kernel
    arguments that set its log level to errors); a normal run streams everything."""
    from landmarks_lib.runs import pipeline

    seen = []

    def fake_execute(src, dst, **kw):
        seen.append(kw.get("extra_arguments"))
        raise KeyboardInterrupt  # stop before any kernel starts

    monkeypatch.setattr(pipeline.pm, "execute_notebook", fake_execute)
    monkeypatch.setattr(pipeline, "check_pair", lambda name: None)
    run = RunFolder(str(tmp_path / "run")).create("test")
    for quiet in (True, False):
        with pytest.raises(KeyboardInterrupt):
            pipeline.run_notebook("01_eda", run, quiet=quiet)
    assert seen == [["--IPKernelApp.log_level=ERROR"], []]


def test_a_test_image_linked_outside_the_data_folder_is_refused_before_predicting(tmp_path):
    """The pipeline's test images obey the same rule as the tables and the training images."""
    from landmarks_lib.data import synthetic
    from landmarks_lib.data.tables import DataFormatError
    from landmarks_lib.runs import workflow

    data = tmp_path / "data"
    synthetic.write_dataset(data, n_train=4, n_test=2, num_points=20, seed=1, min_size=40, max_size=48)
    images = data / "test" / "images"
    first = sorted(os.listdir(images))[0]
    outside = tmp_path / "elsewhere.jpg"
    os.replace(images / first, outside)
    os.symlink(outside, images / first)
    params = {"max_test_images": 0, "allow_links_outside": False, "device": "cpu"}
    model = {"kind": "model", "face": {"meta": {"num_points": 20}}}
    with pytest.raises(DataFormatError, match=f"{first}: a symbolic link to .*outside the data folder"):
        workflow.predict_test(params, str(data), [model])
