"""Process-group context for data-parallel training with ``torch.distributed`` (launched by ``torchrun``).

``init_from_env`` reads the variables ``torchrun`` sets for each process (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``; see https://pytorch.org/docs/stable/elastic/run.html),
picks the device and backend and joins the process group:

- CUDA: backend NCCL, one GPU per process, ``cuda:LOCAL_RANK`` (``torch.cuda.set_device(LOCAL_RANK)``);
- CPU: backend gloo (the only CPU backend shipped with PyTorch wheels);
- not launched by ``torchrun`` (no ``RANK``/``WORLD_SIZE``) or ``WORLD_SIZE == 1``: no process group, a
  single-process ``Context`` with the same interface, so every caller runs unchanged on one process.

``Context`` is the ``dist`` hook of ``engine.fit``/``engine.train_all``: ``rank``, ``world_size``, ``device``,
``all_reduce_mean`` (count-weighted mean of a per-rank value), ``all_reduce_sum``, ``barrier``, and
``broadcast_buffers`` (rank 0's batch-norm statistics to every rank, before validation). Reductions gather the
per-rank values and sum them in rank order in float64 on every rank, so every rank gets a bit-identical result
(a ``ReduceLROnPlateau`` or early stop driven by it decides identically everywhere).

Timeouts: collectives wait at most ``LANDMARKS_DIST_TIMEOUT_MIN`` minutes (default 180), long enough for rank 0 to
build a crop cache of the full dataset while the others wait at a barrier.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass, field

import torch
import torch.distributed as tdist

from ..core.devices import select_device

ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
DEFAULT_TIMEOUT_MIN = 180.0


@dataclass
class Context:
    """One process's place in a (possibly single-process) data-parallel job.

    Attributes:
        rank: global rank, ``0 .. world_size - 1``.
        world_size: number of processes.
        local_rank: rank on this machine (selects the GPU).
        local_world_size: processes on this machine.
        device: this process's ``torch.device`` (``cuda:LOCAL_RANK`` on CUDA).
        backend: ``"nccl"``, ``"gloo"`` or None (no process group: single process).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        """True on rank 0, the only rank that writes files."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        """True when a process group with more than one process is active."""
        return self.backend is not None and self.world_size > 1

    def _comm_device(self) -> torch.device:
        return self.device if self.backend == "nccl" else torch.device("cpu")

    def _gather(self, values) -> torch.Tensor:
        """``float64 [world_size, len(values)]``: every rank's ``values``, row ``r`` from rank ``r``."""
        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self._comm_device())
        out = [torch.empty_like(t) for _ in range(self.world_size)]
        tdist.all_gather(out, t)
        return torch.stack(out).cpu()

    def all_reduce_sum(self, value: float) -> float:
        """Sum of a Python number over ranks (float64, summed in rank order: identical on every rank)."""
        if not self.is_distributed:
            return float(value)
        s = 0.0
        for v in self._gather([value])[:, 0].tolist():
            s += v
        return s

    def all_reduce_mean(self, value: float, count: int) -> float:
        """Count-weighted mean over ranks: ``sum_r value_r * count_r / sum_r count_r``.

        ``value`` is this rank's mean over ``count`` items (e.g. a loss or an MSE over its shard); a rank with
        ``count == 0`` contributes nothing. Where every count is 0 the plain mean of the values is returned.
        The result is bit-identical on every rank.
        """
        if not self.is_distributed:
            return float(value)
        rows = self._gather([float(value) * float(count) if count else 0.0, float(count), float(value)]).tolist()
        total, n, plain = 0.0, 0.0, 0.0
        for weighted, c, v in rows:
            total += weighted
            n += c
            plain += v
        return total / n if n > 0 else plain / len(rows)

    def barrier(self) -> None:
        """Wait until every rank gets here (no-op on one process)."""
        if self.is_distributed:
            if self.backend == "nccl":
                tdist.barrier(device_ids=[self.device.index])
            else:
                tdist.barrier()

    def broadcast_buffers(self, module: torch.nn.Module, src: int = 0) -> None:
        """Copy ``src``'s buffers (batch-norm running statistics) into ``module`` on every rank, in place.

        Under ``DistributedDataParallel`` parameters are identical on all ranks after each step, but each rank's
        batch-norm running statistics were last updated with its own batch; after this call every rank holds the
        same model (the one rank 0 saves).
        """
        if not self.is_distributed:
            return
        for b in module.buffers():
            tdist.broadcast(b.data, src=src)

    def gather_objects(self, obj) -> list:
        """Every rank's picklable ``obj``, in rank order, on every rank."""
        if not self.is_distributed:
            return [obj]
        out = [None] * self.world_size
        tdist.all_gather_object(out, obj)
        return out


def launched_by_torchrun(env=None) -> bool:
    """True when ``RANK`` and ``WORLD_SIZE`` are set (``torchrun`` or an equivalent launcher)."""
    env = os.environ if env is None else env
    return "RANK" in env and "WORLD_SIZE" in env


def _timeout() -> datetime.timedelta:
    return datetime.timedelta(minutes=float(os.environ.get("LANDMARKS_DIST_TIMEOUT_MIN", DEFAULT_TIMEOUT_MIN)))


def init_from_env(device_param: str = "auto", backend: str | None = None) -> Context:
    """Join the process group described by ``torchrun``'s environment variables, or make a single-process context.

    Args:
        device_param: the ``device`` parameter: ``auto``, ``cpu``, ``cuda`` (or ``mps`` on one process only).
            With several processes, ``auto``/``cuda`` give each process ``cuda:LOCAL_RANK``; ``auto`` without
            CUDA gives the CPU.
        backend: force a backend (``gloo`` or ``nccl``); default NCCL on CUDA, gloo on CPU.
    Returns:
        ``Context``; with more than one process, ``torch.distributed`` is initialised (``shutdown`` ends it).
    Raises:
        ValueError: a device with an index (``cuda:1``) or MPS with several processes; ``LOCAL_RANK`` beyond the
            visible GPUs (``--nproc_per_node`` larger than the GPU count).
        RuntimeError: from ``init_process_group`` (e.g. the master address cannot be reached before the timeout).
    """

    env = os.environ
    if not launched_by_torchrun(env) or int(env["WORLD_SIZE"]) <= 1:
        dev = select_device(device_param)
        if dev.type == "cuda" and dev.index is None and "LOCAL_RANK" in env:
            dev = torch.device("cuda", int(env["LOCAL_RANK"]))
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        return Context(device=dev)

    rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
    local_rank = int(env.get("LOCAL_RANK", 0))
    local_world = int(env.get("LOCAL_WORLD_SIZE", 1))
    dev = select_device(device_param)
    if dev.index is not None:
        raise ValueError(f"device {device_param!r}: with {world} processes each one uses cuda:LOCAL_RANK; "
                         f"pass device=cuda or auto (restrict GPUs with CUDA_VISIBLE_DEVICES)")
    if dev.type == "mps":
        if device_param != "auto":
            raise ValueError("MPS does not support multi-process training; use device=cpu or run one process")
        dev = torch.device("cpu")
    if dev.type == "cuda":
        n = torch.cuda.device_count()
        if local_rank >= n:
            raise ValueError(f"LOCAL_RANK {local_rank} but only {n} CUDA device(s) are visible; launch at most "
                             f"{n} processes per node (torchrun --nproc_per_node {n})")
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    backend = backend or ("nccl" if dev.type == "cuda" else "gloo")
    if not tdist.is_initialized():
        tdist.init_process_group(backend=backend, rank=rank, world_size=world, timeout=_timeout())
    return Context(rank=rank, world_size=world, local_rank=local_rank, local_world_size=local_world, device=dev,
                   backend=backend)


def shutdown(ctx: Context | None = None) -> None:
    """Leave the process group (no-op when none is active)."""
    if tdist.is_available() and tdist.is_initialized():
        tdist.destroy_process_group()
