"""Distributed faults on CPU (gloo): a rank killed with SIGKILL mid-training ends the whole job quickly with a message
naming it, a dead peer is noticed without torchrun too, and a peer that hangs makes collectives fail after
``--dist_timeout`` instead of blocking forever."""

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _tiny_experiment import PYTHON, TOOLS, write_tiny_config  # noqa: E402

pytestmark = pytest.mark.slow


def _env() -> dict:
    return {**os.environ, "PATH": f"{PYTHON.parent}{os.pathsep}{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}


def _rank_of(pid: int) -> int | None:
    for entry in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
        if entry.startswith(b"RANK="):
            return int(entry[5:])
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the worker processes through /proc")
def test_sigkill_of_one_rank_ends_dist_train_within_seconds_naming_it(tmp_path, record_property):
    cfg_file = write_tiny_config(tmp_path, epochs=100)  # far more than the test lets it run
    log_path = tmp_path / "log.txt"
    cmd = ["bash", "scripts/dist_train.sh", "2", "--cfg_file", str(cfg_file), "--workers", "0", "--batch_size", "2",
           "--output_root", str(tmp_path / "out"), "--logger_iter_interval", "1"]  # fmt: skip
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            cmd, cwd=TOOLS, env=_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.time() + 180
        while "Train: epoch" not in log_path.read_text():
            assert proc.poll() is None and time.time() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.1)
        # dist_train.sh execs torchrun: its children are the two training processes
        children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
        ranks = {_rank_of(int(pid)): int(pid) for pid in children}
        assert set(ranks) == {0, 1}, ranks
        killed_at = time.time()
        os.kill(ranks[1], signal.SIGKILL)
        returncode = proc.wait(timeout=60)
        elapsed = time.time() - killed_at
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    record_property("exit_after_kill_s", round(elapsed, 1))
    output = log_path.read_text()
    assert returncode != 0 and elapsed < 60
    # torchrun's report: the root cause is rank 1, killed by signal 9; rank 0 was stopped, not left hanging
    root_cause = output.split("Root Cause (first observed failure):", 1)[1]
    assert "rank      : 1 (local_rank: 1)" in root_cause and "Signal 9 (SIGKILL)" in root_cause
    for pid in ranks.values():
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()


PEER_SCRIPT = """
import os, sys, time
sys.path.insert(0, {tools!r})
import torch, torch.distributed as dist
from train_utils.dist_launch import init_distributed
mode, timeout = sys.argv[1], float(sys.argv[2])
_, _, rank = init_distributed("pytorch", 0, int(os.environ["LOCAL_RANK"]), timeout_s=timeout)
print(f"rank {{rank}} joined", flush=True)
for step in range(1000):
    if rank == 1 and step == 3:
        if mode == "die":
            os.kill(os.getpid(), 9)
        time.sleep(600)  # mode "hang": alive, but never reaches the next collective
    start = time.time()
    try:
        dist.all_reduce(torch.ones(4))
    except Exception as exc:
        print(f"rank {{rank}} failed after {{time.time() - start:.1f}} s: {{exc}}", flush=True)
        sys.exit(3)
    time.sleep(0.05)
"""


def _launch_pair(mode: str, timeout_s: float) -> tuple[subprocess.Popen, subprocess.Popen]:
    """Two processes joined by the environment, as SLURM or a hand-written launcher would start them."""
    port = _free_port()
    script = PEER_SCRIPT.format(tools=str(TOOLS))
    procs = []
    for rank in (0, 1):
        env = {**_env(), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
               "LOCAL_RANK": str(rank), "WORLD_SIZE": "2"}  # fmt: skip
        procs.append(subprocess.Popen([str(PYTHON), "-c", script, mode, str(timeout_s)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))  # fmt: skip
    return procs[0], procs[1]


@pytest.mark.parametrize("mode", ["die", "hang"])
def test_survivor_fails_fast_without_torchrun(mode, record_property):
    """A dead peer closes its sockets (gloo notices at once); a hung one is caught by the process-group timeout."""
    rank0, rank1 = _launch_pair(mode, timeout_s=5.0)
    try:
        out, _ = rank0.communicate(timeout=90)
    finally:
        for proc in (rank0, rank1):
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    # 3 from the script, or SIGABRT when gloo tears down the broken group at interpreter exit: either way it ended
    assert rank0.returncode != 0, out
    failed = [line for line in out.splitlines() if line.startswith("rank 0 failed after")]
    assert failed, out
    seconds = float(failed[0].split()[4])
    record_property(f"{mode}_rank0_failed_after_s", seconds)
    if mode == "die":
        assert seconds < 10 and any(f"{word} by peer" in failed[0].lower() for word in ("closed", "reset"))
    else:
        assert 4.0 <= seconds < 15 and "timed out" in failed[0].lower()


def test_dist_timeout_flag_and_validation():
    from train_utils.dist_launch import DEFAULT_TIMEOUT_S, init_distributed

    for name in ("train", "test"):
        spec = importlib.util.spec_from_file_location(f"pcdet_tool_{name}_faults", TOOLS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        parser = module.build_parser()
        assert parser.parse_args(["--cfg_file", "x"]).dist_timeout == DEFAULT_TIMEOUT_S == 1800
        assert parser.parse_args(["--cfg_file", "x", "--dist_timeout", "90"]).dist_timeout == 90
    with pytest.raises(ValueError, match="--dist_timeout must be a positive number of seconds"):
        init_distributed("pytorch", 12345, 0, timeout_s=0)
