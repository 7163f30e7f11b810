"""Run the four notebooks in order on one run folder, with papermill: the whole pipeline from the shell.

``python -m landmarks_lib.pipeline [--data-dir DIR] --run-dir DIR [--params FILE.yaml] [-p NAME VALUE ...]
[--resume | --force] [--notebooks 01,02,...]``

1. Parameters are resolved as everywhere in the package (``params.resolve``): defaults < ``--params`` profile <
   ``-p NAME VALUE`` (values read as YAML scalars: ``5`` int, ``1e-3`` float, ``true`` bool, ``null``, text
   otherwise; unknown names are an error listing the known ones) < ``--data-dir`` / ``--run-dir``. Folder
   parameters (``data_dir``, ``run_dir``, ``cache_dir``, ``ensemble_runs``) are made absolute, so the notebooks find
   them whatever their working directory (the run folder).
2. The resolved parameters are written to ``<run_dir>/params.yaml``.
3. ``notebooks/01_eda.ipynb`` .. ``04_visualize.ipynb`` are executed in order with the parameters injected after
   their ``parameters`` cell; each executed copy goes to ``<run_dir>/notebooks/NN_name.ipynb`` (never over the
   sources) and is exported to ``<run_dir>/reports/NN_name.html``. The kernel inherits this process's environment
   (``TORCH_HOME``, ``LANDMARKS_CACHE``, ``CUDA_VISIBLE_DEVICES``, ...).
4. After each notebook, ``<run_dir>/pipeline_state.json`` records it as finished (atomically), with the
   parameters of the run.

A run folder that is not empty is refused unless ``--resume`` (continue: notebooks recorded as finished are
skipped, and a notebook that stopped half-way resumes its training from the last checkpoint; refused when the
parameters differ from those recorded in ``pipeline_state.json``, or, in a folder without it (written by
``landmarks_lib.train`` or by the notebooks run by hand), when a parameter the trained models depend on differs
from its ``params.yaml``) or ``--force`` (delete the run folder's contents and start over; only
for a folder that looks like a run folder). With ``--resume``, notebooks named in ``--notebooks`` run again even
when finished (e.g. ``--resume --notebooks 04`` redraws the figures).

A failing cell stops the pipeline with exit status 1 and a message naming the notebook, the cell and the error;
the partly executed notebook (with the error in it) and its HTML report stay in the run folder. Usage errors and
refusals exit with status 2. At the end the validation metrics and the submission path are printed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import signal
import sys
import threading
import time

import yaml

from . import params as params_mod
from .io import atomic_open, atomic_write_json

NOTEBOOKS = ("01_eda", "02_train", "03_finetune", "04_visualize")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK_DIR = os.path.join(REPO_ROOT, "notebooks")
STATE_FILE = "pipeline_state.json"
RUN_MARKERS = (STATE_FILE, "params.yaml", "run_info.json")
PATH_PARAMS = ("data_dir", "run_dir", "cache_dir")
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
def absolute_paths(params: dict, base: str | None = None) -> dict:
    """A copy of ``params`` with the folder parameters made absolute (relative to ``base``, default the current
    directory): ``data_dir``, ``run_dir``, ``cache_dir`` when not empty, and every entry of ``ensemble_runs``."""
    base = os.path.abspath(base or os.getcwd())
    out = dict(params)

    def absolute(p):
        return os.path.normpath(os.path.join(base, os.path.expanduser(str(p))))

    for k in PATH_PARAMS:
        if out.get(k):
            out[k] = absolute(out[k])
    if out.get("ensemble_runs"):
        out["ensemble_runs"] = ",".join(absolute(r.strip()) for r in str(out["ensemble_runs"]).split(",")
                                        if r.strip())
    return out


def resolve_params(profile=None, overrides=(), data_dir=None, run_dir=None) -> dict:
    """The run's parameters: defaults < ``profile`` < ``overrides`` (``(name, text)`` pairs, YAML scalars) <
    ``data_dir`` / ``run_dir``; folder parameters made absolute (``absolute_paths``).

    Raises:
        params.ParamError: unknown name (the message lists the known ones) or a value of the wrong type.
        PipelineError: no run folder.
    """
    kw = {}
    if data_dir is not None:
        kw["data_dir"] = data_dir
    if run_dir is not None:
        kw["run_dir"] = run_dir
    if profile and not os.path.exists(profile):
        raise PipelineError(f"{profile}: parameter profile not found")
    p = params_mod.resolve(profile, list(overrides or ()), **kw)
    if not p["run_dir"]:
        raise PipelineError("run_dir is empty; give --run-dir DIR")
    return absolute_paths(p)


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


# ------------------------------------------------------------------------------------------------ run folder
def read_state(run_dir) -> dict | None:
    """``<run_dir>/pipeline_state.json`` or None."""
    path = os.path.join(run_dir, STATE_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def write_state(run_dir, state: dict) -> None:
    """Write ``pipeline_state.json`` atomically."""
    atomic_write_json(os.path.join(run_dir, STATE_FILE), state)


def _is_within(path, parent) -> bool:
    path, parent = os.path.realpath(path), os.path.realpath(parent)
    return path == parent or path.startswith(parent.rstrip(os.sep) + os.sep)


def clear_run_dir(run_dir, protect=()) -> None:
    """Delete the contents of a run folder (``--force``).

    Args:
        protect: further folders that must survive (e.g. the data and cache folders of the run's parameters).
    Raises:
        PipelineError: the folder does not look like a run folder (none of ``params.yaml``, ``run_info.json``,
            ``pipeline_state.json``), or it holds the repository, the home folder, the current directory or one
            of ``protect``.
    """
    if not any(os.path.exists(os.path.join(run_dir, m)) for m in RUN_MARKERS):
        raise PipelineError(f"{run_dir}: not empty and not a run folder (no {', '.join(RUN_MARKERS)}); "
                            f"refusing to delete its contents with --force; choose a new or empty --run-dir")
    for guarded in (REPO_ROOT, os.path.expanduser("~"), os.getcwd(), *[p for p in protect if p]):
        if _is_within(guarded, run_dir):
            raise PipelineError(f"{run_dir}: holds {guarded}; refusing to delete it with --force")
    for name in os.listdir(run_dir):
        p = os.path.join(run_dir, name)
        if os.path.isdir(p) and not os.path.islink(p):
            shutil.rmtree(p)
        else:
            os.remove(p)


def _written_from(recorded_run_dir, run_dir) -> str:
    """The folder a ``params.yaml`` with relative paths was written from: the one from which its own ``run_dir``
    names ``run_dir`` (e.g. ``notebooks/`` for ``runs/default`` written by a notebook opened in Jupyter); the current
    directory when there is none."""
    rec = os.path.expanduser(str(recorded_run_dir or ""))
    real = os.path.realpath(run_dir)
    if rec and not os.path.isabs(rec):
        base = real
        for _ in os.path.normpath(rec).split(os.sep):
            base = os.path.dirname(base)
        if os.path.realpath(os.path.join(base, rec)) == real:
            return base
    return os.getcwd()


def check_params_yaml(params: dict) -> None:
    """``--resume`` of a run folder without ``pipeline_state.json`` (written by ``landmarks_lib.train`` or by the
    notebooks run by hand): its ``params.yaml``, if any, must agree with ``params`` on every parameter the trained
    models depend on (``params.training_params``; an empty ``data_dir`` counts as ``<run_dir>/data``, the embedded
    synthetic default; relative folders in the file count from where it was written, ``_written_from``). A folder
    with neither file is accepted (training still refuses checkpoints made with other parameters).

    Raises:
        PipelineError: the file cannot be read as parameters, or values differ (the message lists them).
    """
    run_dir = params["run_dir"]
    path = os.path.join(run_dir, "params.yaml")
    if not os.path.exists(path):
        return
    try:
        old = params_mod.resolve(path)
    except (params_mod.ParamError, yaml.YAMLError) as e:
        raise PipelineError(f"{path}: cannot be read to compare with this run's parameters ({e}); use --force to "
                            f"start over") from e

    def comparable(p, base=None):
        return params_mod.training_params(dict(p, data_dir=p.get("data_dir") or os.path.join(run_dir, "data")), base)

    a, b = comparable(old, _written_from(old["run_dir"], run_dir)), comparable(params)
    diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    if diff:
        raise PipelineError(f"{run_dir}: --resume with other parameters than its params.yaml (the folder has no "
                            f"{STATE_FILE}: written by landmarks_lib.train or the notebooks) "
                            f"({', '.join(f'{k}: {a.get(k)!r} -> {b.get(k)!r}' for k in diff)}); "
                            f"use the same parameters, or --force to start over")


def prepare_run_dir(params: dict, resume: bool = False, force: bool = False) -> dict:
    """Check (or clear) the run folder and return the pipeline state to continue from.

    Returns:
        ``{"params": params, "finished": {name: {...}}}``: the recorded state with ``--resume``, else a new one.
    Raises:
        PipelineError: a non-empty folder without ``--resume``/``--force``; ``--resume`` with other parameters than
            the recorded ones (the message lists the names), or, without ``pipeline_state.json``, than those of the
            folder's ``params.yaml`` (``check_params_yaml``); ``--force`` on a folder that is not a run folder.
    """
    run_dir = params["run_dir"]
    if resume and force:
        raise PipelineError("--resume and --force exclude each other")
    if os.path.exists(run_dir) and not os.path.isdir(run_dir):
        raise PipelineError(f"{run_dir}: exists and is not a folder")
    state = None
    if os.path.isdir(run_dir) and os.listdir(run_dir):
        if force:
            clear_run_dir(run_dir, protect=[params.get("data_dir"), params.get("cache_dir")])
        elif resume:
            state = read_state(run_dir)
            if state is not None and state.get("params") != params:
                old = state.get("params") or {}
                diff = sorted(k for k in set(old) | set(params) if old.get(k) != params.get(k))
                raise PipelineError(f"{run_dir}: --resume with other parameters than the run's "
                                    f"({', '.join(f'{k}: {old.get(k)!r} -> {params.get(k)!r}' for k in diff)}); "
                                    f"use the same parameters, or --force to start over")
            if state is None:
                check_params_yaml(params)
        else:
            raise PipelineError(f"{run_dir}: run folder is not empty; add --resume to continue it or --force to "
                                f"delete it and start over (or choose another --run-dir)")
    os.makedirs(run_dir, exist_ok=True)
    if state is None:
        state = {"params": params, "finished": {}}
    return state


# ------------------------------------------------------------------------------------------------- execution
def _cell_label(err, nb_path) -> str:
    """``cell N (In [M])`` and the first source line of the failing cell; N counts the source notebook's cells
    from 1 (papermill's injected parameters cell is not counted)."""
    idx = int(err.cell_index)
    injected = 0
    try:
        import nbformat

        nb = nbformat.read(nb_path, as_version=4)
        cells = [c for c in nb.cells if "papermill-error-cell-tag" not in c.metadata.get("tags", [])]
        injected = sum(1 for c in cells[:idx] if "injected-parameters" in c.metadata.get("tags", []))
    except Exception:  # noqa: BLE001 - the label is a courtesy; the error itself is reported anyway
        pass
    first = next((line.strip() for line in str(err.source).splitlines() if line.strip()), "")
    return f"cell {idx + 1 - injected} (In [{err.exec_count}]): {first[:100]}"


def export_html(ipynb_path, html_path) -> None:
    """Export an executed notebook to a standalone HTML report (nbconvert), atomically."""
    import nbformat
    from nbconvert import HTMLExporter

    nb = nbformat.read(ipynb_path, as_version=4)
    body, _ = HTMLExporter().from_notebook_node(nb)
    with atomic_open(html_path, "w", encoding="utf-8") as f:
        f.write(body)


def run_notebook(name: str, params: dict, run_dir, quiet: bool = False) -> float:
    """Execute ``notebooks/<name>.ipynb`` with ``params`` into ``<run_dir>/notebooks/<name>.ipynb`` and export
    ``<run_dir>/reports/<name>.html``. The notebook is written beside its target under a hidden name while it runs
    and renamed into place when it ends, finished or failed.

    Returns:
        seconds taken.
    Raises:
        NotebookFailed: a cell raised (the partly executed notebook and its report are kept).
        FileNotFoundError: the source notebook is missing (run ``make sync-notebooks``).
    """
    import papermill as pm

    src = os.path.join(NOTEBOOK_DIR, f"{name}.ipynb")
    if not os.path.exists(src):
        raise FileNotFoundError(f"{src}: source notebook is missing (make sync-notebooks writes it from {name}.py)")
    out_dir = os.path.join(run_dir, "notebooks")
    os.makedirs(out_dir, exist_ok=True)
    out = os.path.join(out_dir, f"{name}.ipynb")
    tmp = os.path.join(out_dir, f".{name}.running.ipynb")
    html = os.path.join(run_dir, "reports", f"{name}.html")
    t0 = time.time()
    failure = None
    try:
        pm.execute_notebook(src, tmp, parameters=params, cwd=run_dir, kernel_name=KERNEL, progress_bar=False,
                            log_output=False, stdout_file=None if quiet else sys.stdout,
                            stderr_file=None if quiet else sys.stderr)
    except pm.PapermillExecutionError as e:
        failure = (f"notebook {name} failed in {_cell_label(e, tmp)}\n  {e.ename}: {e.evalue}\n"
                   f"  the partly executed notebook is {out}")
    finally:
        if os.path.exists(tmp):
            os.replace(tmp, out)
    if os.path.exists(out):
        try:
            export_html(out, html)
        except Exception as e:  # noqa: BLE001 - a report that cannot be rendered must not hide the run's result
            print(f"[pipeline] warning: could not export {html}: {type(e).__name__}: {e}", file=sys.stderr)
    if failure:
        raise NotebookFailed(failure, name, out)
    return time.time() - t0


def summarize(run_dir) -> str:
    """The final metrics (``metrics.json``) and the submission path (or the partial one), as text."""
    lines = []
    mpath = os.path.join(run_dir, "metrics.json")
    if os.path.exists(mpath):
        with open(mpath) as f:
            m = json.load(f)
        lines.append("metrics: " + ", ".join(f"{k} = {v:.4g}" if isinstance(v, float) else f"{k} = {v}"
                                             for k, v in sorted(m.items())))
    sub = os.path.join(run_dir, "submission.csv")
    partial = os.path.join(run_dir, "submission_partial.csv")
    if os.path.exists(sub):
        lines.append(f"submission: {sub}")
    elif os.path.exists(partial):
        lines.append(f"partial submission (max_test_images; not for upload): {partial}")
    lines.append(f"reports: {os.path.join(run_dir, 'reports')}")
    return "\n".join(lines)


def run_pipeline(params: dict, notebooks=None, resume: bool = False, force: bool = False,
                 quiet: bool = False) -> dict:
    """Prepare the run folder, write ``params.yaml`` and execute the notebooks (see the module docstring).

    Args:
        params: resolved parameters with absolute folders (``resolve_params``).
        notebooks: names to run (default all, in order); with ``resume`` they run even when finished.
    Returns:
        the final pipeline state.
    Raises:
        PipelineError, NotebookFailed.
    """
    run_dir = params["run_dir"]
    chosen = list(notebooks) if notebooks else list(NOTEBOOKS)
    state = prepare_run_dir(params, resume=resume, force=force)
    if not os.path.exists(os.path.join(run_dir, "params.yaml")):
        params_mod.dump(params, os.path.join(run_dir, "params.yaml"))
    write_state(run_dir, state)
    for name in chosen:
        if resume and notebooks is None and name in state["finished"]:
            print(f"[pipeline] {name}: finished earlier, skipped (--resume)", flush=True)
            continue
        print(f"[pipeline] {name}: running -> {os.path.join(run_dir, 'notebooks', name + '.ipynb')}", flush=True)
        seconds = run_notebook(name, params, run_dir, quiet=quiet)
        state["finished"][name] = {"seconds": round(seconds, 1),
                                   "at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        write_state(run_dir, state)
        print(f"[pipeline] {name}: done in {seconds:.0f} s", flush=True)
    return state


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m landmarks_lib.pipeline",
        description="Run the notebooks 01_eda, 02_train, 03_finetune and 04_visualize in order on one run folder "
                    "(papermill); executed notebooks, HTML reports, checkpoints, metrics and the submission land in "
                    "the run folder.",
        epilog="Example: python -m landmarks_lib.pipeline --run-dir runs/demo --params params/demo.yaml --force")
    ap.add_argument("--data-dir", default=None,
                    help="contest-format data folder (parameter data_dir; default: the embedded synthetic data)")
    ap.add_argument("--run-dir", default=None, help="run folder (parameter run_dir)")
    ap.add_argument("--params", default=None, metavar="FILE.yaml", help="parameter profile, e.g. params/cpu.yaml")
    ap.add_argument("-p", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                    help="override one parameter (repeatable); VALUE is read as a YAML scalar")
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--resume", action="store_true",
                   help="continue a run folder: skip finished notebooks (same parameters only)")
    g.add_argument("--force", action="store_true", help="delete the run folder's contents and start over")
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


def _main(args) -> int:
    try:
        params = resolve_params(args.params, args.p, args.data_dir, args.run_dir)
        chosen = select_notebooks(args.notebooks)
        t0 = time.time()
        run_pipeline(params, chosen if args.notebooks else None, resume=args.resume, force=args.force,
                     quiet=args.quiet)
    except (params_mod.ParamError, PipelineError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except NotebookFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"[pipeline] finished in {time.time() - t0:.0f} s; run folder {params['run_dir']}")
    print(summarize(params["run_dir"]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
