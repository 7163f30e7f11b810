"""OpenMP's wait policy, chosen by the CPU's load when torch is first imported.

torch's CPU kernels run on GNU OpenMP (libgomp) threads, which spin while they wait for each other at the end of a
parallel region (300,000 spins by default). On a CPU that another process keeps busy, a spinning thread burns the
time slice its partner needs: a ``cpu.yaml`` training step (2 threads on 2 cores) ran at 0.30 of its speed while a
busy loop held one core, and at 0.82 with ``OMP_WAIT_POLICY=PASSIVE`` (waiting threads sleep at once), which in turn
costs about 30 % when the machine is free (``benchmarks/threads_under_load.py``). libgomp reads the policy once,
when it loads (at ``import torch``), so it is chosen then:

- when other processes keep at least ``BUSY_CORES`` cores busy over a ``SAMPLE_S`` sample of ``/proc/stat``,
  ``OMP_WAIT_POLICY=PASSIVE``; otherwise libgomp's default;
- a policy the user set (``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT`` in the environment) is kept, and
  ``LANDMARKS_WAIT_POLICY=default`` turns the choice off;
- a load that begins after the process started is not seen (set ``OMP_WAIT_POLICY=PASSIVE`` or ``-p threads 1``
  yourself on a machine that is shared all the time).

The wait policy changes no result: the same weights under either policy (tested; only the thread count changes
floating-point sums, and it is not touched). ``install()`` (called by ``landmarks_lib/__init__.py``) hooks the first
``import torch`` of the process, so processes that never import torch (the onnx predict path) pay nothing; the
sample costs ``SAMPLE_S`` once per process that does. ``CHOICE`` records what was decided (``workflow.run_info``
writes it into ``run_info.json``).
"""

from __future__ import annotations

import os
import sys
import time

SAMPLE_S = 0.2
BUSY_CORES = 0.5  # other processes' CPU use, in cores, from which waiting threads sleep
CHOICE: dict = {}  # {"policy": "PASSIVE" | "default" | "user", "others_cores": float | None}


def _cpu_times():
    """``(busy, total)`` clock ticks of all CPUs from the first line of ``/proc/stat``, or None."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = v[3] + (v[4] if len(v) > 4 else 0)  # idle + iowait
    return sum(v[:8]) - idle, sum(v[:8])


def _own_ticks() -> int:
    """This process's user + system ticks (all its threads), from ``/proc/self/stat``."""
    try:
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, ValueError, IndexError):
        return 0


def others_cores(sample_s: float = SAMPLE_S) -> float | None:
    """Cores kept busy by other processes over ``sample_s`` seconds (this process's own use subtracted), or None
    where ``/proc/stat`` cannot be read (not Linux)."""
    a, own_a = _cpu_times(), _own_ticks()
    if a is None:
        return None
    time.sleep(sample_s)
    b, own_b = _cpu_times(), _own_ticks()
    if b is None or b[1] <= a[1]:
        return None
    busy = max(0, (b[0] - a[0]) - (own_b - own_a))
    return busy / (b[1] - a[1]) * (os.cpu_count() or 1)


def choose_wait_policy(environ=None, sample_s: float = SAMPLE_S) -> dict:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` in ``environ`` (default ``os.environ``) when other processes keep at least
    ``BUSY_CORES`` busy (see the module docstring); returns and records the choice in ``CHOICE``. Call it before
    libgomp loads (before ``import torch``): afterwards it changes nothing."""
    env = os.environ if environ is None else environ
    if "OMP_WAIT_POLICY" in env or "GOMP_SPINCOUNT" in env:
        choice = {"policy": "user", "others_cores": None}
    elif env.get("LANDMARKS_WAIT_POLICY", "") == "default":
        choice = {"policy": "default", "others_cores": None}
    else:
        busy = others_cores(sample_s)
        passive = busy is not None and busy >= BUSY_CORES
        if passive:
            env["OMP_WAIT_POLICY"] = "PASSIVE"
        choice = {"policy": "PASSIVE" if passive else "default",
                  "others_cores": None if busy is None else round(busy, 2)}
    CHOICE.clear()
    CHOICE.update(choice)
    return choice


class _TorchImportHook:
    """A ``sys.meta_path`` entry that runs ``choose_wait_policy`` just before torch is first imported, then removes
    itself (it finds nothing: the import proceeds as usual)."""

    def find_spec(self, name, path=None, target=None):
        if name == "torch":
            remove()
            choose_wait_policy()
        return None


def install() -> None:
    """Hook the process's first ``import torch`` (nothing when torch is already imported or the hook is in
    place)."""
    if "torch" in sys.modules or any(isinstance(f, _TorchImportHook) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _TorchImportHook())


def remove() -> None:
    """Take the hook out of ``sys.meta_path``."""
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _TorchImportHook)]
