"""OpenMP's waiting adapted to the CPU's load (``cpuload``): the watcher's switching rule, the helper team that
makes libgomp's waiting threads sleep, a busy loop seen while torch runs, and the user's setting kept."""

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
    code = ("import os, json, torch\nfrom landmarks_lib.training import cpuload\n"
            "torch.set_num_threads(2); torch.ones(1 << 20).add_(1)  # the main team exists\n"
            "n = lambda: len(os.listdir('/proc/self/task'))\n"
            "lib = cpuload.libgomp(); before = n()\n"
            "t = cpuload.Throttle(lib, cpuload.available_cpus() - 2 + 1); t.start(); on = n(); t.stop()\n"
            "import time; time.sleep(0.2); after = n()\n"
            "print(json.dumps([lib is not None, before, on, after]))\n")
    found, before, on, after = child_json(code, clean_env())
    assert found  # torch's OpenMP is libgomp here
    extra = cpuload.available_cpus() - 1
    assert on == before + 1 + extra  # the helper thread and its team's workers
    assert after == before


@pytest.mark.skipif(not (LINUX and TWO_CPUS), reason="needs Linux and 2 CPUs")
def test_a_busy_loop_started_while_torch_runs_makes_waiting_threads_sleep_until_it_stops():
    code = ("import json, subprocess, sys, time, torch\nfrom landmarks_lib.training import cpuload, engine\n"
            "engine.apply_threads({'threads': 2})\n"
            "x = torch.randn(256, 256)\n"
            "def until(flag, limit=15.0):\n"
            "    t = time.monotonic()\n"
            "    while cpuload.STATE['sleeping'] != flag and time.monotonic() - t < limit:\n"
            "        (x @ x).sum()  # torch keeps working\n"
            "    return cpuload.STATE['sleeping'] == flag\n"
            "calm = until(False, 1.0)\n"
            "hog = subprocess.Popen([sys.executable, '-c', 'while True: pass'])\n"
            "slept = until(True)\n"
            "hog.kill(); hog.wait()\n"
            "spins = until(False)\n"
            "print(json.dumps([calm, slept, spins, dict(cpuload.STATE)]))\n")
    calm, slept, spins, state = child_json(code, clean_env())
    assert state["policy"] == "adaptive" and state["threads"] == 2
    assert calm and slept and spins and state["switches"] >= 2 and state["sleeping_s"] > 0


def test_no_watcher_where_the_user_set_the_wait_or_one_thread_runs():
    code = ("import json, threading, torch\nfrom landmarks_lib.training import cpuload, engine\n"
            "engine.apply_threads({'threads': THREADS})\n"
            "names = [t.name for t in threading.enumerate()]\n"
            "print(json.dumps([cpuload.STATE['policy'], 'landmarks-cpuload' in names]))\n")
    runs = [("2", clean_env(OMP_WAIT_POLICY="PASSIVE"), "user"), ("2", clean_env(LANDMARKS_WAIT_POLICY="default"),
                                                                   "default"), ("1", clean_env(), "default")]
    for threads, env, want in runs:
        assert child_json(code.replace("THREADS", threads), env) == [want, False]


@pytest.mark.skipif(not LINUX, reason="reads /proc/stat (Linux)")
def test_others_cores_sees_a_busy_loop(hog):
    assert cpuload.others_cores(0.3) >= 0.8  # the busy loop: about one core
