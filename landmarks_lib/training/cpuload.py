"""OpenMP's waiting, adapted to the CPU's load while the process runs.

torch's CPU kernels run on GNU OpenMP (libgomp) threads, which spin while they wait for each other at the end of a
parallel region (300,000 spins by default). On a CPU that another process keeps busy, a spinning thread burns the
time slice its partner needs: a ``cpu.yaml`` training step (2 threads on 2 cores) ran at 0.30 of its speed while a
busy loop held one core; with ``OMP_WAIT_POLICY=PASSIVE`` (waiting threads sleep at once) it keeps about half, but
that policy costs about 30 % when the machine is free (``benchmarks/threads_under_load.py``). libgomp reads
``OMP_WAIT_POLICY`` and ``GOMP_SPINCOUNT`` once, when it loads, but it has a documented rule of its own that it
applies at every wait: when it manages more threads than there are CPUs, a waiting thread spins only 100 times
before it sleeps (the libgomp manual, ``GOMP_SPINCOUNT``). ``Watcher`` uses that rule, when a run opts in with the
``adaptive_threads`` parameter (off by default: a run then keeps libgomp's own waiting):

- every ``SAMPLE_S`` it reads ``/proc/stat``; when other processes kept at least ``BUSY_CORES`` cores busy over
  the sample, a helper thread opens an OpenMP team of its own (``Throttle``: its threads sleep, and only their
  number counts), so libgomp manages one thread more than the CPUs and every waiting thread of the process sleeps
  almost at once;
- after ``CALM_SAMPLES`` samples in a row below ``BUSY_CORES`` the helper's team ends and libgomp's own spinning
  comes back;
- a policy the user set (``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT`` in the environment) is kept (no watcher), and
  ``LANDMARKS_WAIT_POLICY=default`` turns the watcher off even with ``adaptive_threads``; without libgomp (another
  OpenMP runtime), without ``/proc/stat`` (not Linux) or with one torch thread (no team to wait in) there is nothing
  to do.

The wait changes no result: the thread count and so the split of every sum stay as they are (tested: the same
weights with the helper's team on, off, or switched during training). ``engine.apply_threads`` (every stage's
thread setting: training, prediction, noise finding, evaluation) calls ``watch``, which starts the watcher once per
process when ``adaptive_threads`` is true; ``STATE`` says what it does and has done (or why it does not run), and
``workflow.run_info`` records the policy in ``run_info.json``.
"""

from __future__ import annotations

import ctypes
import os
import threading
import time

SAMPLE_S = 0.5  # seconds per sample of /proc/stat
BUSY_CORES = 0.5  # other processes' CPU use, in cores, from which waiting threads sleep
CALM_SAMPLES = 2  # samples in a row below BUSY_CORES before libgomp spins again
ENV_OFF = "LANDMARKS_WAIT_POLICY"

# {"policy": "adaptive" | "user" | "default" | "unavailable", "reason": str | None, "threads": int,
#  "sleeping": bool, "switches": int, "sleeping_s": float, "others_cores": float | None}
STATE: dict = {}
_LOCK = threading.Lock()
_WATCHER = None


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


class _Sampler:
    """Other processes' CPU use since the previous ``take()``, in cores (this process's own use subtracted)."""

    def __init__(self):
        self.last = (_cpu_times(), _own_ticks())

    def take(self) -> float | None:
        a, own_a = self.last
        b, own_b = _cpu_times(), _own_ticks()
        self.last = (b, own_b)
        if a is None or b is None or b[1] <= a[1]:
            return None
        busy = max(0, (b[0] - a[0]) - (own_b - own_a))
        return busy / (b[1] - a[1]) * (os.cpu_count() or 1)


def others_cores(sample_s: float = SAMPLE_S) -> float | None:
    """Cores kept busy by other processes over ``sample_s`` seconds (this process's own use subtracted), or None
    where ``/proc/stat`` cannot be read (not Linux)."""
    s = _Sampler()
    if s.last[0] is None:
        return None
    time.sleep(sample_s)
    return s.take()


def libgomp():
    """The GNU OpenMP library this process has loaded (torch's), as a ``ctypes.CDLL``, or None (not loaded yet,
    another OpenMP runtime, or no ``/proc/self/maps``)."""
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "libgomp" in line and "/" in line}
    except OSError:
        return None
    for path in sorted(paths):
        try:
            lib = ctypes.CDLL(path)
            lib.GOMP_parallel  # noqa: B018  (the entry point Throttle calls)
            return lib
        except (OSError, AttributeError):
            continue
    return None


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask; libgomp counts them the same way)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


_NOOP_TYPE = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
_NOOP = _NOOP_TYPE(lambda _: None)


class Throttle:
    """A helper thread holding an idle OpenMP team of ``extra + 1`` threads (``GOMP_parallel`` of a no-op, then
    waiting): while it is on, libgomp manages ``extra`` threads more, and once that exceeds the CPUs every waiting
    thread of the process spins 100 times instead of 300,000 before it sleeps. ``stop()`` ends the helper thread;
    libgomp then frees its team (the thread count of ``/proc/self/task`` goes back). Results do not change: no
    other team's size does."""

    def __init__(self, lib, extra: int):
        self.lib, self.extra = lib, max(1, int(extra))
        self.lib.GOMP_parallel.argtypes = [_NOOP_TYPE, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
        self.lib.GOMP_parallel.restype = None
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = None

    @property
    def on(self) -> bool:
        return self._thread is not None

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._ready.clear()

        def hold():
            self.lib.GOMP_parallel(_NOOP, None, self.extra + 1, 0)
            self._ready.set()
            self._stop.wait()

        self._thread = threading.Thread(target=hold, name="landmarks-omp-throttle", daemon=True)
        self._thread.start()
        self._ready.wait(5.0)

    def stop(self) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = None


class Watcher:
    """The daemon thread of the module docstring: samples the load every ``sample_s`` and switches a ``Throttle``
    on (others at least ``busy_cores``) and off (``calm_samples`` samples in a row below). ``sampler`` returns
    the other processes' cores since its previous call (tests pass their own)."""

    def __init__(self, throttle: Throttle, sample_s: float = SAMPLE_S, busy_cores: float = BUSY_CORES,
                 calm_samples: int = CALM_SAMPLES, sampler=None):
        self.throttle, self.sample_s, self.busy_cores, self.calm_samples = (throttle, sample_s, busy_cores,
                                                                            calm_samples)
        self.sampler = sampler or _Sampler().take
        self._stop = threading.Event()
        self._since, self._calm = None, 0
        self._thread = threading.Thread(target=self._run, name="landmarks-cpuload", daemon=True)

    def start(self) -> Watcher:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self._switch(False)

    def _switch(self, sleep: bool) -> None:
        with _LOCK:
            if sleep == self.throttle.on:
                return
            if sleep:
                self.throttle.start()
                self._since = time.monotonic()
            else:
                self.throttle.stop()
                STATE["sleeping_s"] = round(STATE.get("sleeping_s", 0.0) + time.monotonic() - self._since, 1)
            STATE["sleeping"] = sleep
            STATE["switches"] = STATE.get("switches", 0) + 1

    def step(self, busy: float | None) -> bool:
        """Take one sample (other processes' cores, or None when unknown): switch the throttle on at
        ``busy_cores`` or more, off after ``calm_samples`` samples in a row below. Returns whether it is on."""
        STATE["others_cores"] = None if busy is None else round(busy, 2)
        if busy is not None:
            if busy >= self.busy_cores:
                self._calm = 0
                self._switch(True)
            else:
                self._calm += 1
                if self._calm >= self.calm_samples:
                    self._switch(False)
        return self.throttle.on

    def _run(self) -> None:
        while not self._stop.wait(self.sample_s):
            self.step(self.sampler())


def policy(environ=None) -> tuple[str, str | None]:
    """``("user", why)`` when ``environ`` (default ``os.environ``) sets OpenMP's wait, ``("default", why)`` when
    ``LANDMARKS_WAIT_POLICY=default`` turns the watcher off, else ``("adaptive", None)``."""
    env = os.environ if environ is None else environ
    for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT"):
        if k in env:
            return "user", f"{k}={env[k]}"
    if env.get(ENV_OFF, "") == "default":
        return "default", f"{ENV_OFF}=default"
    return "adaptive", None


NOT_ASKED = "adaptive_threads is false: libgomp's own waiting"


def watch(threads: int, adaptive: bool = True) -> dict:
    """Start the watcher for a process whose torch uses ``threads`` CPU threads (once per process; a later call
    with another count restarts it). Returns ``STATE``. Nothing starts, and a running watcher stops, when
    ``adaptive`` is false (the ``adaptive_threads`` parameter), when ``policy()`` is not adaptive, with one thread,
    or without libgomp or ``/proc/stat`` (``STATE["policy"]`` and ``STATE["reason"]`` then say which)."""
    global _WATCHER
    threads = int(threads)
    if adaptive and _WATCHER is not None and STATE.get("threads") == threads:
        return STATE
    unwatch()
    kind, reason = policy()
    lib = None
    if kind == "adaptive":
        if not adaptive:
            kind, reason = "default", NOT_ASKED
        elif threads < 2:
            kind, reason = "default", "one thread: no team to wait in"
        elif threads > available_cpus():
            kind, reason = "default", "more threads than CPUs: libgomp already sleeps soon"
        elif _cpu_times() is None:
            kind, reason = "unavailable", "no /proc/stat"
        elif (lib := libgomp()) is None:
            kind, reason = "unavailable", "torch's OpenMP is not GNU libgomp"
    STATE.clear()
    STATE.update(policy=kind, reason=reason, threads=threads, sleeping=False, switches=0, sleeping_s=0.0,
                 others_cores=None)
    if kind == "adaptive":
        # libgomp manages `threads` now; the helper's team adds `extra` so that the count exceeds the CPUs
        _WATCHER = Watcher(Throttle(lib, available_cpus() - threads + 1)).start()
    return STATE


def unwatch() -> None:
    """Stop the watcher (its throttle off); nothing when none runs."""
    global _WATCHER
    if _WATCHER is not None:
        _WATCHER.stop()
        _WATCHER = None


def summary() -> dict:
    """What ``run_info.json`` records: the policy, why (when not adaptive), the thread count and the thresholds.
    Before any ``watch`` call no watcher runs: the user's policy, or libgomp's default (``NOT_ASKED``)."""
    if STATE:
        kind, reason = STATE["policy"], STATE["reason"]
    else:
        kind, reason = policy()
        if kind == "adaptive":
            kind, reason = "default", NOT_ASKED
    return {"policy": kind, "reason": reason, "threads": STATE.get("threads"), "busy_cores": BUSY_CORES,
            "sample_s": SAMPLE_S}
