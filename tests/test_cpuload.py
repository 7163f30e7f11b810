"""OpenMP's wait policy by the CPU's load (``cpuload``): chosen before torch loads, the user's setting kept."""

import json
import os
import subprocess
import sys
import time

import pytest

from landmarks_lib import cpuload

HOG = [sys.executable, "-c", "while True: pass"]


@pytest.fixture
def hog():
    """A busy loop holding one core while the test runs."""
    p = subprocess.Popen(HOG)
    time.sleep(0.3)
    yield p
    p.kill()
    p.wait()


def test_a_policy_the_user_set_is_kept(monkeypatch):
    monkeypatch.setattr(cpuload, "others_cores", lambda *a: 2.0)  # a busy machine
    for preset in ({"OMP_WAIT_POLICY": "ACTIVE"}, {"GOMP_SPINCOUNT": "1000"}):
        env = dict(preset)
        assert cpuload.choose_wait_policy(env)["policy"] == "user" and env == preset
    env = {"LANDMARKS_WAIT_POLICY": "default"}
    assert cpuload.choose_wait_policy(env)["policy"] == "default" and "OMP_WAIT_POLICY" not in env


def test_an_idle_machine_keeps_the_default_and_a_busy_one_sleeps(monkeypatch):
    monkeypatch.setattr(cpuload, "others_cores", lambda *a: 0.1)
    env = {}
    assert cpuload.choose_wait_policy(env) == {"policy": "default", "others_cores": 0.1} and env == {}
    monkeypatch.setattr(cpuload, "others_cores", lambda *a: 0.9)
    assert cpuload.choose_wait_policy(env)["policy"] == "PASSIVE" and env == {"OMP_WAIT_POLICY": "PASSIVE"}
    assert cpuload.CHOICE["policy"] == "PASSIVE"
    monkeypatch.setattr(cpuload, "others_cores", lambda *a: None)  # no /proc/stat: the default
    env = {}
    assert cpuload.choose_wait_policy(env)["policy"] == "default" and env == {}


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="reads /proc/stat (Linux)")
def test_a_busy_loop_is_seen_and_sets_passive_before_torch_loads(hog):
    assert cpuload.others_cores(0.3) >= 0.8  # the busy loop: about one core
    code = ("import os, sys, json\nimport landmarks_lib\nfrom landmarks_lib import cpuload\n"
            "assert 'torch' not in sys.modules\nimport torch\n"
            "assert not any(isinstance(f, cpuload._TorchImportHook) for f in sys.meta_path)\n"
            "print(json.dumps([cpuload.CHOICE, os.environ.get('OMP_WAIT_POLICY')]))\n")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT",
                                                            "LANDMARKS_WAIT_POLICY")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    choice, policy = json.loads(out.stdout.strip().splitlines()[-1])
    assert choice["policy"] == "PASSIVE" and choice["others_cores"] >= 0.5 and policy == "PASSIVE"
    out = subprocess.run([sys.executable, "-c", code], env={**env, "OMP_WAIT_POLICY": "ACTIVE"},
                         capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [{"policy": "user", "others_cores": None}, "ACTIVE"]
