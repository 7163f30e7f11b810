"""OpenMP's waiting adapted to the CPU's load (``cpuload``, opt-in with ``adaptive_threads``): the watcher's
switching rule, the helper team that makes libgomp's waiting threads sleep, the watcher's thread driving that team
through a scripted load, no watcher by default, and the user's setting kept."""

import json
import os
import subprocess
import sys
import time

import pytest

from landmarks_lib.training import cpuload

HOG = [sys.executable, "-c", "while True: pass"]
LINUX = os.path.exists("/proc/stat") and os.path.exists("/proc/self/task")
TWO_CPUS = cpuload.available_cpus() >= 2


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS",
                                                            cpuload.ENV_OFF)}
    return {**env, **extra}


def child_json(code: str, env: dict):
    """Run ``code`` in a fresh interpreter with ``env``; its last stdout line, parsed as JSON."""
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# a child's start: torch with 2 threads and its main OpenMP team, ``lib`` torch's libgomp (else it prints null)
LIBGOMP_CHILD = ("import json, os, threading, time, torch\nfrom landmarks_lib.training import cpuload\n"
                 "torch.set_num_threads(2); torch.ones(1 << 20).add_(1)  # the main team exists\n"
                 "lib = cpuload.libgomp()\n"
                 "if lib is None: print(json.dumps(None)); raise SystemExit\n")


def libgomp_child(code: str, env: dict):
    """``child_json`` of ``code``, skipping the test where torch's OpenMP is not GNU libgomp (the child prints
    ``null`` then)."""
    out = child_json(code, env)
    if out is None:
        pytest.skip("torch's OpenMP runtime here is not GNU libgomp: no helper team to hold")
    return out


@pytest.fixture
def hog():
    """A busy loop holding one core while the test runs."""
    p = subprocess.Popen(HOG)
    time.sleep(0.3)
    yield p
    p.kill()
    p.wait()


class FakeThrottle:
    def __init__(self):
        self.on, self.starts, self.stops = False, 0, 0

    def start(self):
        self.on, self.starts = True, self.starts + 1

    def stop(self):
        self.on, self.stops = False, self.stops + 1


def test_a_policy_the_user_set_is_kept():
    assert cpuload.policy({"OMP_WAIT_POLICY": "ACTIVE"}) == ("user", "OMP_WAIT_POLICY=ACTIVE")
    assert cpuload.policy({"GOMP_SPINCOUNT": "1000"}) == ("user", "GOMP_SPINCOUNT=1000")
    assert cpuload.policy({"LANDMARKS_WAIT_POLICY": "default"})[0] == "default"
    assert cpuload.policy({}) == ("adaptive", None)


def test_the_watcher_sleeps_at_the_first_busy_sample_and_spins_again_after_calm_ones():
    cpuload.STATE.clear()
    t = FakeThrottle()
    w = cpuload.Watcher(t, busy_cores=0.5, calm_samples=2, sampler=lambda: 0.0)
    states = [w.step(busy) for busy in (0.1, 0.9, 0.2, 0.7, 0.3, None, 0.1, 0.0, 0.6, 0.49, 0.49)]
    # on at 0.9; 0.2 is one calm sample; 0.7 busy again; 0.3 then (None: unknown, no count) 0.1: off
    assert states == [False, True, True, True, True, True, False, False, True, True, False]
    assert (t.starts, t.stops) == (2, 2)
    assert cpuload.STATE["switches"] == 4 and cpuload.STATE["sleeping"] is False
    assert cpuload.STATE["others_cores"] == 0.49


@pytest.mark.skipif(not (LINUX and TWO_CPUS), reason="needs Linux and 2 CPUs")
def test_the_helper_team_raises_libgomps_thread_count_and_is_freed():
    code = LIBGOMP_CHILD + (
        "n = lambda: len(os.listdir('/proc/self/task'))\n"
        "before = n()\n"
        "t = cpuload.Throttle(lib, cpuload.available_cpus() - 2 + 1); t.start(); on = n(); t.stop()\n"
        "time.sleep(0.2); after = n()\n"
        "print(json.dumps([before, on, after]))\n")
    before, on, after = libgomp_child(code, clean_env())
    extra = cpuload.available_cpus() - 1
    assert on == before + 1 + extra  # the helper thread and its team's workers
    assert after == before


@pytest.mark.skipif(not (LINUX and TWO_CPUS), reason="needs Linux (/proc/self/task) and 2 CPUs")
def test_the_watcher_thread_starts_and_stops_the_helper_team_as_scripted_samples_say():
    """The watcher's own thread, fed a scripted load instead of /proc/stat, switches the real helper team: the
    sampler records, at each call, whether the team is on and the process's thread count (the helper and its
    workers present while on, gone while off)."""
    code = LIBGOMP_CHILD + (
        "n = lambda: len(os.listdir('/proc/self/task'))\n"
        "extra = cpuload.available_cpus() - 2 + 1\n"
        "samples = SAMPLES\n"
        "seen, done = [], threading.Event()\n"
        "def settle(want, limit=20.0):  # libgomp frees a finished team's workers a moment later\n"
        "    t = time.monotonic()\n"
        "    while n() != want and time.monotonic() - t < limit: time.sleep(0.01)\n"
        "    return n()\n"
        "def sampler():\n"
        "    if done.is_set(): return None\n"
        "    on = w.throttle.on\n"
        "    seen.append([on, settle(base + 1 + (1 + extra if on else 0)) - base - 1])\n"
        "    if len(seen) > len(samples): done.set(); return None\n"
        "    return samples[len(seen) - 1]\n"
        "cpuload.STATE.clear(); base = n()\n"
        "w = cpuload.Watcher(cpuload.Throttle(lib, extra), sample_s=0.01, busy_cores=0.5, calm_samples=2,\n"
        "                    sampler=sampler)\n"
        "w.start(); finished = done.wait(120.0); w.stop(); after = settle(base) - base\n"
        "print(json.dumps([finished, extra, seen, after, dict(cpuload.STATE)]))\n")
    samples = [0.1, 0.9, 0.2, 0.7, 0.3, None, 0.1, 0.0, 0.6, 0.49, 0.49]
    finished, extra, seen, after, state = libgomp_child(code.replace("SAMPLES", repr(samples)), clean_env())
    assert finished
    # the state after each sample (as in the switching-rule test), seen at the next call; the first call: off
    on = [False, False, True, True, True, True, True, False, False, True, True, False]
    assert seen == [[o, 1 + extra if o else 0] for o in on]  # the helper thread and its team's workers, or none
    assert after == 0  # the watcher stopped, the team freed
    assert state["switches"] == 4 and state["sleeping"] is False and state["sleeping_s"] >= 0


def test_by_default_apply_threads_sets_the_count_as_given_and_starts_no_watcher():
    code = ("import json, threading, torch\nfrom landmarks_lib.training import cpuload, engine\n"
            "from landmarks_lib.core.params import DEFAULTS\n"
            "out = []\n"
            "for threads in (DEFAULTS['threads'], 2, 3, 1):\n"
            "    got = engine.apply_threads(dict(DEFAULTS, threads=threads))\n"
            "    names = [t.name for t in threading.enumerate()]\n"
            "    out.append([threads, got, torch.get_num_threads(), any('landmarks' in n for n in names),\n"
            "                cpuload.summary()])\n"
            "print(json.dumps(out))\n")
    for threads, got, in_torch, watcher, summary in child_json(code, clean_env()):
        assert got == in_torch == threads
        assert not watcher  # neither the watcher nor a helper thread
        assert summary["policy"] == "default" and summary["reason"] == cpuload.NOT_ASKED
        assert summary["threads"] == threads


@pytest.mark.skipif(not (LINUX and TWO_CPUS), reason="needs Linux (/proc/stat) and 2 CPUs (the watcher's rule "
                                                       "needs no more threads than CPUs)")
def test_adaptive_threads_starts_the_watcher():
    code = LIBGOMP_CHILD + (
        "from landmarks_lib.training import engine\n"
        "got = engine.apply_threads({'threads': 2, 'adaptive_threads': True})\n"
        "running = 'landmarks-cpuload' in [t.name for t in threading.enumerate()]\n"
        "state = dict(cpuload.STATE); cpuload.unwatch()\n"
        "stopped = 'landmarks-cpuload' not in [t.name for t in threading.enumerate()]\n"
        "print(json.dumps([got, torch.get_num_threads(), running, stopped, state]))\n")
    got, in_torch, running, stopped, state = libgomp_child(code, clean_env())
    assert got == in_torch == 2
    assert running and stopped
    assert state["policy"] == "adaptive" and state["reason"] is None and state["threads"] == 2


def test_no_watcher_where_the_user_set_the_wait_or_one_thread_runs():
    code = ("import json, threading, torch\nfrom landmarks_lib.training import cpuload, engine\n"
            "engine.apply_threads({'threads': THREADS, 'adaptive_threads': True})\n"
            "names = [t.name for t in threading.enumerate()]\n"
            "print(json.dumps([cpuload.STATE['policy'], 'landmarks-cpuload' in names]))\n")
    runs = [("2", clean_env(OMP_WAIT_POLICY="PASSIVE"), "user"), ("2", clean_env(LANDMARKS_WAIT_POLICY="default"),
                                                                   "default"), ("1", clean_env(), "default")]
    for threads, env, want in runs:
        assert child_json(code.replace("THREADS", threads), env) == [want, False]


@pytest.mark.skipif(not LINUX, reason="reads /proc/stat (Linux)")
def test_others_cores_sees_a_busy_loop(hog):
    assert cpuload.others_cores(0.3) >= 0.8  # the busy loop: about one core
