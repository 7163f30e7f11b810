"""Run the four notebooks in order on one run folder, with papermill: the whole pipeline from the shell.

``python -m landmarks_lib.pipeline [--data-dir DIR] --run-dir DIR [--params FILE.yaml] [-p NAME VALUE ...]
[--resume [--retrain] | --force] [--notebooks 01,02,...]``

1. Parameters are resolved by ``params.resolve``: defaults < the run's ``params.yaml`` if it exists (else the
   ``--params`` profile) < ``-p NAME VALUE`` (typed by the spec) < ``--data-dir`` / ``--run-dir``; folders are made
   absolute. Every value is checked before any work (exit status 2).
2. The run folder gets its marker (``files.MARKER``) and its lock (a second runner is refused with the first one's
   pid), and ``<run_dir>/params.yaml`` is written.
3. ``notebooks/01_eda.ipynb`` .. ``04_visualize.ipynb`` are executed in order; papermill injects only ``run_dir``
   (and ``retrain``), and each notebook reads the rest from ``params.yaml``. Each executed copy goes to
   ``<run_dir>/notebooks/NN_name.ipynb`` and is exported to ``<run_dir>/reports/NN_name.html``. A notebook whose
   ``.py`` and ``.ipynb`` differ is refused (``make sync-notebooks``). The kernel inherits this process's environment
   (``TORCH_HOME``, ``LANDMARKS_CACHE``, ``CUDA_VISIBLE_DEVICES``, ...).
4. Each notebook records in ``pipeline_state.json`` that it finished, with its parameters.

A run folder that is not empty is refused unless ``--resume`` or ``--force``. ``--resume`` follows the resume rule
(``plan``): a notebook re-runs when it never finished or when a value of a scope it reads changed, and so does every
later one; ``runtime`` values (device, threads, workers, the folder's location) change freely; a changed training
value is refused (exit 2, listing ``name: old -> new`` and the stages affected) unless ``--retrain``. With
``--notebooks`` exactly those notebooks run (``--resume --notebooks 04`` redraws the figures). ``--force`` removes
only the paths the run folder's manifest declares and refuses any folder without the marker. Nothing is written
or removed outside the run folder through a link: a symbolic link where the project writes (the lock, the marker,
``checkpoints/``, ``data/``, ...) is refused before any work, with one line (``RunFolder.check_links``).

A failing cell stops the pipeline with exit status 1 and a message naming the notebook, the cell and the error; a
dead kernel is named as such; the partly executed notebook and its HTML report stay in the run folder. Usage errors
and refusals exit with status 2. At the end the validation metrics and the submission path are printed.
"""

from __future__ import annotations

import argparse
import copy
import os
import signal
import sys
import threading
import time

import jupytext
import nbformat
import papermill as pm
from nbclient.exceptions import DeadKernelError
from nbconvert import HTMLExporter
from nbconvert.preprocessors import TagRemovePreprocessor

from ..core import logs
from ..core import params as params_mod
from ..core.files import atomic_open
from ..training.engine import STAGES, stages_reading
from .run_folder import LOCK_ENV, RunFolder, RunFolderError
from .workflow import data_fingerprint

LOG = logs.logger(__name__)

NOTEBOOKS = ("01_eda", "02_train", "03_finetune", "04_visualize")
# The parameter scopes each notebook reads (a change re-runs the first notebook that reads it, and every later one).
NOTEBOOK_SCOPES = {"01_eda": ("data", "train"), "02_train": ("data", "localizer", "train"),
                   "03_finetune": ("data", "localizer", "train", "finetune", "inference"),
                   "04_visualize": ("data", "figures")}
TRAINING_SCOPES = ("data", "localizer", "train", "finetune")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NOTEBOOK_DIR = os.path.join(REPO_ROOT, "notebooks")
KERNEL = "python3"


class PipelineError(RuntimeError):
    """A usage error or a refusal (exit status 2); the message says what to do."""


class NotebookFailed(RuntimeError):
    """A notebook stopped on an error (exit status 1); the message names the notebook and the cell."""

    def __init__(self, message: str, notebook: str, output_path: str):
        super().__init__(message)
        self.notebook = notebook
        self.output_path = output_path


# ------------------------------------------------------------------------------------------------ parameters
def resolve_params(profile=None, overrides=(), data_dir=None, run_dir=None, force: bool = False) -> dict:
    """The run's parameters (``params.resolve``): defaults < the run's ``params.yaml`` (unless ``force``: the run
    starts over) or else ``profile`` < ``overrides`` (``(name, text)`` pairs) < ``data_dir`` / ``run_dir``.

    Raises:
        params.ParamError: unknown name (the message lists the known ones) or a bad value.
        PipelineError: no run folder.
    """
    if not run_dir:
        raise PipelineError("give --run-dir DIR")
    return params_mod.resolve(run_dir=run_dir, profile=profile, overrides=list(overrides or ()), data_dir=data_dir,
                              use_run_params=not force)


def select_notebooks(spec: str | None) -> list:
    """Notebook names from ``--notebooks``: comma-separated numbers (``01``, ``2``) or names (``02_train``,
    ``train``), returned in pipeline order; all of them when ``spec`` is empty.

    Raises:
        PipelineError: a name that matches no notebook (the message lists them).
    """
    if not spec:
        return list(NOTEBOOKS)
    chosen = set()
    for item in (s.strip() for s in str(spec).split(",")):
        if not item:
            continue
        match = [n for n in NOTEBOOKS
                 if item == n or item == n.split("_", 1)[1] or (item.isdigit() and int(item) == int(n[:2]))]
        if not match:
            raise PipelineError(f"--notebooks: {item!r} matches no notebook; choose from {', '.join(NOTEBOOKS)}")
        chosen.update(match)
    return [n for n in NOTEBOOKS if n in chosen]


# ------------------------------------------------------------------------------------------------ resume rule
def changes(recorded: dict, params: dict, scopes) -> list:
    """``[(name, old, new)]`` of the parameters in ``scopes`` whose values differ from ``recorded``."""
    return [(k, recorded.get(k), params[k]) for k in params_mod.names_in(*scopes)
            if k in recorded and not params_mod.same_value(k, recorded.get(k), params[k])]


def plan(run: RunFolder, params: dict, retrain: bool = False) -> tuple[int, list]:
    """The resume rule: the first notebook to run again, and the training changes that need ``--retrain``.

    For each notebook in order: one never recorded as finished in ``pipeline_state.json`` runs again, and so does
    one whose recorded parameters differ in a scope it reads (``NOTEBOOK_SCOPES``), and every later one. ``runtime``
    values may differ freely. A change in a training scope (``data``, ``localizer``, ``train``, ``finetune``) is
    listed as ``name: old -> new`` with the stages it affects, and so is a change of the data itself (its
    fingerprint: the tables' and images' sizes and times); the caller refuses them without ``retrain``.

    Returns:
        ``(index into NOTEBOOKS of the first notebook to run, ["name: old -> new (stages: ...)", ...])``.
    """

    state = run.state()["notebooks"]
    data_dir = params["data_dir"] or run.file("data")
    fp = data_fingerprint(data_dir) if os.path.isdir(data_dir) else None
    first, training = len(NOTEBOOKS), {}
    for i, nb in enumerate(NOTEBOOKS):
        rec = state.get(nb)
        diff = changes(rec["params"], params, NOTEBOOK_SCOPES[nb]) if rec else None
        moved = bool(rec and rec.get("data_fingerprint") and fp and rec["data_fingerprint"] != fp)
        if rec is None or diff or moved:
            first = min(first, i)
        if moved:
            training.setdefault("data", f"the data in {data_dir} changed (tables or images) since {nb} ran "
                                f"(stages: {', '.join(STAGES)})")
        for name, old, new in diff or ():
            if params_mod.SPEC[name].scope in TRAINING_SCOPES:
                training[name] = f"{name}: {old!r} -> {new!r} (stages: {', '.join(stages_reading([name]))})"
    return first, list(training.values())


def prepare_run(params: dict, resume: bool = False, force: bool = False, retrain: bool = False,
                log=print) -> tuple[RunFolder, int]:
    """Check (or clear) the run folder, take its lock, and find where to start.

    Returns:
        ``(run, index of the first notebook to run)`` (0 for a new run).
    Raises:
        PipelineError: a non-empty folder without ``--resume``/``--force``; ``--force`` or ``--resume`` on a folder
            without the run-folder marker; a resume whose training parameters changed, without ``--retrain`` (the
            message lists ``name: old -> new`` and the stages affected).
        RunFolderError: another process works on the run (a lock record whose process has ended is named as
            stale); a malformed marker; a symbolic link where the project writes (``RunFolder.check_links``: the
            lock, the marker, ``checkpoints/``, ``data/``, ...), refused before anything is written.
    """
    run = RunFolder(params["run_dir"])
    if resume and force:
        raise PipelineError("--resume and --force exclude each other")
    busy = os.path.isdir(run.path) and bool(os.listdir(run.path))
    if busy and not run.is_run():
        raise PipelineError(f"{run.path}: not empty and not a run folder (no {os.path.basename(run.marker)}); "
                            f"nothing in it is touched; choose a new or empty --run-dir")
    if busy:  # before anything is written: a malformed marker, or a link where the project writes, is refused
        run.check_links()
        run.manifest()
    if busy and not (resume or force):
        raise PipelineError(f"{run.path}: run folder is not empty; add --resume to continue it, or --force to "
                            f"remove what this project wrote there and start over (or choose another --run-dir)")
    run.create(created_by="landmarks_lib.pipeline").lock("landmarks_lib.pipeline")
    if force and busy:
        run.clear(log)
    first = 0
    if resume:
        first, training = plan(run, params, retrain)
        if training and not retrain:
            run.unlock()
            raise PipelineError(f"{run.path}: --resume with other training parameters than the run's: "
                                f"{'; '.join(training)}. Add --retrain to train those stages again (their "
                                f"checkpoints are replaced; nothing else is removed), or use the old values")
    return run, first


# ------------------------------------------------------------------------------------------------- execution
def _cell_label(err, nb_path) -> str:
    """``cell N (In [M])`` and the first source line of the failing cell; N counts the source notebook's cells
    from 1 (papermill's injected parameters cell is not counted)."""
    idx = int(err.cell_index)
    injected = 0
    try:

        nb = nbformat.read(nb_path, as_version=4)
        cells = [c for c in nb.cells if "papermill-error-cell-tag" not in c.metadata.get("tags", [])]
        injected = sum(1 for c in cells[:idx] if "injected-parameters" in c.metadata.get("tags", []))
    except Exception:  # noqa: BLE001 - the label is a courtesy; the error itself is reported anyway
        pass
    first = next((line.strip() for line in str(err.source).splitlines() if line.strip()), "")
    return f"cell {idx + 1 - injected} (In [{err.exec_count}]): {first[:100]}"


WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
TEMPLATES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates")


def report_notebook(nb, title: str):
    """A copy of an executed notebook as the HTML report shows it: titled, without widget state (progress-bar
    widgets keep their text), with the parameter cells' code hidden."""

    nb = copy.deepcopy(nb)
    nb.metadata.pop("widgets", None)
    nb.metadata["title"] = title
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        tags = set(cell.metadata.get("tags", []))
        if tags & {"parameters", "injected-parameters"}:
            cell.metadata.setdefault("jupyter", {})["source_hidden"] = True
            cell.metadata["transient"] = {"remove_source": True}
        for out in cell.get("outputs", []):
            if isinstance(out.get("data"), dict):
                out["data"].pop(WIDGET_MIME, None)
    return nb


def export_html(ipynb_path, html_path, title: str | None = None) -> None:
    """Export an executed notebook to a standalone HTML report (nbconvert, ``templates/report.html.j2``: nothing
    loaded from the network), titled ``title`` (default the file name), parameter cells' code hidden, no widget
    state; written atomically."""

    nb = report_notebook(nbformat.read(ipynb_path, as_version=4),
                         title or os.path.splitext(os.path.basename(ipynb_path))[0])
    exporter = HTMLExporter(extra_template_paths=[TEMPLATES], template_file="report.html.j2")
    exporter.register_preprocessor(TagRemovePreprocessor(remove_input_tags={"parameters", "injected-parameters"},
                                                         enabled=True), enabled=True)
    body, _ = exporter.from_notebook_node(nb)
    with atomic_open(html_path, "w", encoding="utf-8") as f:
        f.write(body)


def check_pair(name: str) -> None:
    """Refuse a notebook whose ``.py`` (the source people edit) and paired ``.ipynb`` (what papermill runs) differ
    in their code cells.

    Raises:
        PipelineError: the pair is out of sync (the message says ``make sync-notebooks``), or the ``.ipynb`` is
            missing.
    """

    py, ipynb = os.path.join(NOTEBOOK_DIR, f"{name}.py"), os.path.join(NOTEBOOK_DIR, f"{name}.ipynb")
    if not os.path.exists(ipynb):
        raise PipelineError(f"{ipynb}: source notebook is missing; run make sync-notebooks")

    def code(nb):
        return [c.source.strip() for c in nb.cells if c.cell_type == "code"]

    if os.path.exists(py) and code(jupytext.read(py)) != code(nbformat.read(ipynb, as_version=4)):
        raise PipelineError(f"{py} and {os.path.basename(ipynb)} differ in their code cells; run make "
                            f"sync-notebooks (the .ipynb is what runs)")


# Under ``--quiet`` the kernels log errors only: no warning about the local kernel's TCP transport (the kernel and
# the runner talk over the loopback interface of this machine, started and ended by the runner).
QUIET_KERNEL = ["--IPKernelApp.log_level=ERROR"]


def run_notebook(name: str, run: RunFolder, retrain: bool = False, quiet: bool = False) -> float:
    """Execute ``notebooks/<name>.ipynb`` on the run into ``<run>/notebooks/<name>.ipynb`` and export
    ``<run>/reports/<name>.html``; papermill injects ``run_dir`` (and ``retrain`` into the training notebooks), and
    the notebook reads every other value from the run's ``params.yaml``. The notebook is written beside its target
    under a hidden name while it runs and renamed into place when it ends, finished or failed.

    Returns:
        seconds taken.
    Raises:
        NotebookFailed: a cell raised, or the kernel died (the partly executed notebook and its report are kept).
    """

    check_pair(name)
    out = os.path.join(run.file("notebooks"), f"{name}.ipynb")
    tmp = os.path.join(run.file("notebooks"), f".{name}.running.ipynb")
    os.makedirs(run.file("notebooks"), exist_ok=True)
    inject = {"run_dir": run.path, **({"retrain": bool(retrain)} if name in ("02_train", "03_finetune") else {})}
    t0, failure = time.time(), None
    try:
        pm.execute_notebook(os.path.join(NOTEBOOK_DIR, f"{name}.ipynb"), tmp, parameters=inject, cwd=run.path,
                            kernel_name=KERNEL, progress_bar=False, log_output=False,
                            stdout_file=None if quiet else sys.stdout, stderr_file=None if quiet else sys.stderr,
                            extra_arguments=QUIET_KERNEL if quiet else [])
    except pm.PapermillExecutionError as e:
        failure = (f"notebook {name} failed in {_cell_label(e, tmp)}\n  {e.ename}: {e.evalue}\n"
                   f"  the partly executed notebook is {out}")
    except DeadKernelError:
        failure = f"notebook {name}: kernel died (killed, likely out of memory); the partly executed notebook is {out}"
    finally:
        if os.path.exists(tmp):
            os.replace(tmp, out)
    if os.path.exists(out):
        try:
            export_html(out, os.path.join(run.file("reports"), f"{name}.html"), title=f"{name} · {run.name}")
        except Exception as e:  # noqa: BLE001 - a report that cannot be rendered must not hide the run's result
            LOG.warning(f"[pipeline] warning: could not export the report of {name}: {type(e).__name__}: {e}")
    if failure:
        raise NotebookFailed(failure, name, out)
    return time.time() - t0


def summarize(run: RunFolder) -> str:
    """The final metrics (``metrics.json``) and the submission path (or the partial one), as text."""
    lines = []
    m = run.read_metrics()
    if m:
        lines.append("metrics: " + ", ".join(f"{k} = {v:.4g}" if isinstance(v, float) else f"{k} = {v}"
                                             for k, v in sorted(m.items())))
    sub = run.submission()
    if sub and sub.endswith("partial.csv"):
        lines.append(f"partial submission (max_test_images; not for upload): {sub}")
    elif sub:
        lines.append(f"submission: {sub}")
    lines.append(f"reports: {run.file('reports')}")
    return "\n".join(lines)


def run_pipeline(params: dict, notebooks=None, resume: bool = False, force: bool = False, retrain: bool = False,
                 quiet: bool = False) -> RunFolder:
    """Prepare the run folder (``prepare_run``), write ``params.yaml`` and execute the notebooks from the first one
    the resume rule names (``plan``), or exactly ``notebooks`` when given.

    Raises:
        PipelineError, NotebookFailed, RunFolderError.
    """
    run, first = prepare_run(params, resume=resume, force=force, retrain=retrain)
    os.environ[LOCK_ENV] = run.path  # the notebook kernels inherit it: they work under this runner's lock
    try:
        params_mod.dump(params, run.file("params.yaml"))
        chosen = list(notebooks) if notebooks else list(NOTEBOOKS[first:])
        for name in NOTEBOOKS:
            if name not in chosen:
                if resume:
                    LOG.info(f"[pipeline] {name}: finished earlier with these parameters, skipped (--resume)")
                continue
            LOG.info(f"[pipeline] {name}: running -> {os.path.join(run.file('notebooks'), name + '.ipynb')}")
            seconds = run_notebook(name, run, retrain=retrain, quiet=quiet)
            LOG.info(f"[pipeline] {name}: done in {seconds:.0f} s")
    finally:
        os.environ.pop(LOCK_ENV, None)
        run.unlock()
    return run


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="landmarks run",
        description="Run the notebooks 01_eda, 02_train, 03_finetune and 04_visualize in order on one run folder "
                    "(papermill); executed notebooks, HTML reports, checkpoints, metrics and the submission land in "
                    "the run folder.",
        epilog="Example: python -m landmarks_lib.pipeline --run-dir runs/demo --params params/demo.yaml --force")
    ap.add_argument("--data-dir", default=None,
                    help="data folder, any format of docs/data.md (parameter data_dir; default: the embedded "
                         "synthetic data)")
    ap.add_argument("--run-dir", default=None, help="run folder (parameter run_dir)")
    ap.add_argument("--params", default=None, metavar="FILE.yaml",
                    help="parameter profile for a new run, e.g. params/cpu.yaml (a run's own params.yaml wins)")
    ap.add_argument("-p", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                    help="override one parameter (repeatable); VALUE is typed by the parameter spec")
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--resume", action="store_true",
                   help="continue a run folder: re-run only the notebooks whose parameters changed, and later ones")
    g.add_argument("--force", action="store_true",
                   help="remove what this project wrote in the run folder and start over")
    ap.add_argument("--retrain", action="store_true",
                    help="with --resume: train again the stages whose training parameters changed")
    ap.add_argument("--notebooks", default=None, metavar="01,02,...",
                    help=f"run only these notebooks (numbers or names; default all: {','.join(NOTEBOOKS)})")
    ap.add_argument("--quiet", action="store_true", help="do not stream the notebooks' output")
    return ap


def _terminate(signum, frame):
    """SIGTERM -> SystemExit, so ``finally`` blocks run: the notebook being executed is moved into place with
    what it has so far, and papermill shuts its kernel down."""
    raise SystemExit(128 + signum)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return _main(args)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _warn_ignored_profile(args, params) -> None:
    """With ``--resume`` the run's own ``params.yaml`` wins over ``--params``: say so when the profile holds other
    values than the run (they are not used)."""
    if not (args.params and args.resume and os.path.isfile(os.path.join(params["run_dir"], "params.yaml"))):
        return
    prof = params_mod.load_profile(args.params)
    other = sorted(k for k, v in prof.items() if k not in params_mod.PATH_PARAMS and params.get(k) != v)
    if other:
        LOG.warning(f"[pipeline] warning: --params {args.params} is ignored (a resumed run starts from its own "
                    f"params.yaml); it differs in {', '.join(other)}; change values with -p NAME VALUE")


def _main(args) -> int:
    try:
        if args.retrain and not args.resume:
            raise PipelineError("--retrain goes with --resume (a new run trains every stage anyway)")
        params = resolve_params(args.params, args.p, args.data_dir, args.run_dir, force=args.force)
        _warn_ignored_profile(args, params)
        chosen = select_notebooks(args.notebooks)
        t0 = time.time()
        run = run_pipeline(params, chosen if args.notebooks else None, resume=args.resume, force=args.force,
                           retrain=args.retrain, quiet=args.quiet)
    except (params_mod.ParamError, PipelineError, RunFolderError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except NotebookFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"error: {e.filename or ''}{': ' if e.filename else ''}{e.strerror or e}", file=sys.stderr)
        return 1
    LOG.info(f"[pipeline] finished in {time.time() - t0:.0f} s; run folder {run.path}")
    print(summarize(run), flush=True)
    return 0
