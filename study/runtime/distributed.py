"""Several processes per trial (train.processes > 1): PyTorch DistributedDataParallel, started the way
torchrun starts it, on one machine or several.

`run_trial` in a plain process relaunches the trial under torchrun (`--standalone`, one machine, one
process per GPU or CPU share) and waits; each rank then runs `run_trial` again with torchrun's
environment. Rank 0 does what a single process does (MLflow run, checkpoints, evaluation, pruning,
export); the other ranks only train, each on its share of every global batch, and stop when training
ends. In a worker job of `sweep.py --launcher slurm` the ranks are the job's SLURM tasks instead: the
worker starts them as a job step (srun), on one node or several, and each takes its rank from SLURM's
environment. Across machines without SLURM, start the ranks yourself, with runs/ on shared storage:
    torchrun --nnodes 2 --nproc-per-node 4 --rdzv-backend c10d --rdzv-endpoint HOST:29400 \\
        -m study.distributed_trial EXPERIMENT.toml --set train.processes=8 [--set KEY=VALUE ...]
"""
from __future__ import annotations

import ctypes
import datetime
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch
import torch.distributed as dist

TIMEOUT = datetime.timedelta(hours=2)  # rank 0 evaluates the dev set while the others wait
SLURM_TASKS_ENV = "STUDY_SLURM_TASKS"  # a --launcher slurm worker job's task count (study/sweep/slurm.py)


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the number of processes of its trial (0 and 1 outside torchrun)."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def weight_gap_to_rank0(model: torch.nn.Module) -> float:
    """The largest absolute difference between this rank's parameters and rank 0's, the same on every rank
    (a collective: every rank calls it). DDP keeps the ranks' parameters identical; anything but 0 means
    they trained different models. Buffers are left out: BatchNorm's running statistics take each rank's
    own share of the last batch, and DDP sends rank 0's to the others only at the next forward pass."""
    flat = torch.cat([p.detach().reshape(-1).float() for p in model.parameters()])  # (P,)
    reference = flat.clone()
    dist.broadcast(reference, src=0)
    gap = (flat - reference).abs().max().reshape(1)
    dist.all_reduce(gap, op=dist.ReduceOp.MAX)
    return gap.item()


def local_device(name: str) -> str:
    """A rank's device: `cuda` becomes the GPU of its local rank; anything else is kept."""
    if name in ("cuda", "auto") and torch.cuda.is_available() and rank_and_world()[1] > 1:
        return f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    return name


def exit_with_parent() -> None:
    """torchrun starts each rank in a session of its own, so a rank outlived a killed torchrun and went on
    to finish its trial beside the resumed copy of it (two writers of one checkpoint and one MLflow run).
    A rank now ends itself when its parent is gone."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGKILL)
    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _die_with_parent() -> None:
    """Runs in torchrun's process before it starts: SIGKILL when the process that launched it dies (Linux's
    PR_SET_PDEATHSIG), so a killed sweep worker takes its distributed trial with it."""
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG


def init(device: torch.device) -> None:
    """Joins the trial's process group (NCCL on GPUs, gloo on CPUs); nothing outside torchrun."""
    if rank_and_world()[1] > 1 and not dist.is_initialized():
        exit_with_parent()
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=TIMEOUT,
                                device_id=device if device.type == "cuda" else None)


def shutdown() -> None:
    """Leaves the process group before the interpreter exits: a rank that exited with it alive could
    abort in the C++ teardown of gloo's threads ("terminate called without an active exception", seen
    once in CI on the rank that only trains), failing a trial that had finished."""
    if dist.is_initialized():
        dist.destroy_process_group()


def ranks_from_slurm() -> None:
    """In a rank started by srun: the variables torch.distributed reads, from SLURM's (the job step's tasks).
    SIGUSR2, SLURM's time-limit warning, reaches every step: the worker that started this one acts on it,
    and a rank would die of it (its default action) before the worker could."""
    os.environ.update(RANK=os.environ["SLURM_PROCID"], WORLD_SIZE=os.environ["SLURM_NTASKS"],
                      LOCAL_RANK=os.environ["SLURM_LOCALID"])
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("", 0))
        return probe.getsockname()[1]


def launch(config_path: Path, processes: int, tracking_uri: str, runs_dir: Path, tags_json: str) -> None:
    """Runs the trial whose resolved configuration is at config_path with `processes` ranks: as a job step
    over the SLURM tasks of a --launcher slurm worker job that has enough, else under torchrun here."""
    trial = ["-m", "study.distributed_trial", "--resolved", str(config_path), "--tracking-uri", tracking_uri,
             "--runs-dir", str(runs_dir), "--tags", tags_json]
    root = str(Path(__file__).resolve().parents[2])  # this checkout first: the ranks run the same code
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
           "PYTHONPATH": os.pathsep.join([root, *filter(None, [os.environ.get("PYTHONPATH")])])}
    if int(os.environ.get(SLURM_TASKS_ENV, 0)) >= processes:
        # Rank 0 runs on the job's first node, where this worker runs (SLURM places tasks in blocks);
        # --overlap: the step shares the cores of the worker's own step, which only waits for it.
        env.update(MASTER_ADDR=socket.gethostname(), MASTER_PORT=str(_free_port()))
        cpus = [f"--cpus-per-task={env['SLURM_CPUS_PER_TASK']}"] if env.get("SLURM_CPUS_PER_TASK") else []
        command = ["srun", "--overlap", f"--ntasks={processes}", "--kill-on-bad-exit=1", *cpus,
                   sys.executable, *trial, "--ranks-from-slurm"]
        print(f"the trial's {processes} ranks: SLURM tasks of job {os.environ.get('SLURM_JOB_ID')} (srun)", flush=True)
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
                   *trial]
    done = subprocess.run(command, env=env, preexec_fn=_die_with_parent)
    if done.returncode:
        raise RuntimeError(f"the distributed trial exited with code {done.returncode} (its ranks' output is above)")
