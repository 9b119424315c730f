"""One job over several processes (``torchrun --nproc-per-node N``): data-parallel training.

kdbench never schedules work: Snakemake places a job, and ``torchrun`` starts its N
processes; this module makes the N processes one training run.

- :func:`init_from_env` reads torchrun's ``WORLD_SIZE`` / ``RANK`` / ``LOCAL_RANK`` (and
  ``MASTER_ADDR`` / ``MASTER_PORT``) and starts the process group: ``nccl`` when the job
  runs on CUDA (each process on ``cuda:LOCAL_RANK``), ``gloo`` on CPU. Without those
  variables (or with ``WORLD_SIZE=1``) it does nothing, and the single-process path is
  exactly today's.
- The training loader gives each rank its contiguous slice of every global batch of the
  epoch's one global permutation (``kdbench.data.loader``), so the union of the ranks'
  sub-batches of a step is the single-process batch of ``batch_size`` images, with the
  same crops and flips: the ``(seed, epoch)`` determinism is kept. ``batch_size`` is the
  global batch and must be divisible by the world size.
- Gradients: after ``backward`` the engine averages every trainable gradient over the
  ranks (:meth:`World.average_gradients`, one flat all-reduce per dtype), which is what
  ``DistributedDataParallel`` does, without its "unused parameter" restrictions (CID's head
  is unused during its warm-up). Every rank then takes the same optimizer step: the
  replicas stay identical.
- BatchNorm: in a DDP run every BatchNorm of the trained parts (the student and the extra
  modules; the frozen teacher is in eval mode and uses its running statistics) is
  converted to normalise with the statistics of the *global* batch
  (:func:`convert_batchnorm`: ``torch.nn.SyncBatchNorm`` on CUDA, :class:`GlobalBatchNorm`,
  a small autograd all-reduce version, on CPU where SyncBatchNorm does not run). With it a
  DDP run with global batch B matches a single-process run with batch B to float
  tolerance, for every loss that is a mean over the batch's samples (kd, fitnet, at, dkd,
  ...). Terms that couple the samples of a batch (CID's class loss, RKD-style relations)
  are computed over each rank's sub-batch, as in the reference repositories' DDP runs.
- Method state: the engine calls ``Distiller.sync_state(world)`` before every
  ``on_epoch_end``; the default does nothing, CID sums its prototype accumulators over the
  ranks (:meth:`World.all_reduce_sum`).
- Rank 0 alone writes checkpoints, outputs and the MLflow record; a checkpoint stores the
  world size and resuming it with another one is a clear error.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable, List, Optional

import torch
import torch.distributed as dist
from torch import nn

from kdbench.errors import KDBenchError

ENV_VARS = ("WORLD_SIZE", "RANK", "LOCAL_RANK")


class DistributedError(KDBenchError, RuntimeError):
    """A multi-process job is set up inconsistently (names the value and what is allowed)."""


@dataclass(frozen=True)
class World:
    """The process group of one data-parallel job (``size`` > 1)."""

    rank: int
    size: int
    local_rank: int
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # -- collectives -----------------------------------------------------------------
    def all_reduce_sum(self, *tensors: torch.Tensor) -> None:
        """In place: each tensor becomes its sum over the ranks."""
        for t in tensors:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)

    def all_gather_cat(self, tensor: torch.Tensor) -> torch.Tensor:
        """The ranks' tensors (same shape on every rank) concatenated along dim 0, rank order."""
        parts = [torch.empty_like(tensor) for _ in range(self.size)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts, 0)

    def broadcast(self, tensor: torch.Tensor, src: int = 0) -> None:
        dist.broadcast(tensor, src)

    def barrier(self) -> None:
        dist.barrier()

    @torch.no_grad()
    def average_gradients(self, params: Iterable[torch.Tensor]) -> None:
        """Every parameter's ``.grad`` becomes its mean over the ranks (one flat all-reduce
        per dtype/device). All ranks run the same code, so the same parameters have
        gradients everywhere."""
        buckets = {}
        for p in params:
            if p.grad is not None:
                buckets.setdefault((p.grad.dtype, p.grad.device), []).append(p.grad)
        for grads in buckets.values():
            flat = torch.cat([g.reshape(-1) for g in grads])
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            flat.div_(self.size)
            offset = 0
            for g in grads:
                n = g.numel()
                g.copy_(flat[offset:offset + n].view_as(g))
                offset += n

    def check_batch_size(self, batch_size: int, what: str = "batch_size") -> int:
        """The per-rank share of a global batch (``batch_size`` must be divisible)."""
        if batch_size % self.size:
            raise DistributedError(f"{what} {batch_size} is not divisible by the world size {self.size}: "
                                   f"the global batch is split evenly over the processes (use a multiple of {self.size})")
        return batch_size // self.size


def env_world_size() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise DistributedError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not an integer") from None


def current() -> Optional[World]:
    """The job's :class:`World` if a process group with more than one process is running."""
    if not (dist.is_available() and dist.is_initialized()):
        return None
    size = dist.get_world_size()
    if size <= 1:
        return None
    return World(rank=dist.get_rank(), size=size, local_rank=int(os.environ.get("LOCAL_RANK", dist.get_rank())),
                 backend=str(dist.get_backend()))


def init_from_env(device: str = "auto") -> Optional[World]:
    """Start the process group torchrun describes in the environment (nothing to do for
    one process). ``device`` is the profile's: ``nccl`` and ``cuda:LOCAL_RANK`` when it
    resolves to CUDA, ``gloo`` otherwise."""
    size = env_world_size()
    if size <= 1:
        return None
    missing = [v for v in ENV_VARS + ("MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
    if missing:
        raise DistributedError(f"WORLD_SIZE={size} but {', '.join(missing)} not set: start multi-process jobs "
                               f"with `torchrun --nproc-per-node {size} ...`")
    if dist.is_initialized():
        return current()
    local_rank = int(os.environ["LOCAL_RANK"])
    use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise DistributedError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA device(s): "
                                   f"nproc_per_node must not exceed the GPUs of the node")
        torch.cuda.set_device(local_rank)  # "cuda" is now this rank's GPU
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return current()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# ------------------------------------------------------------------------- BatchNorm
class _AllReduceSum(torch.autograd.Function):
    """Sum over the ranks; the gradient of a sum is the sum of the ranks' gradients."""

    @staticmethod
    def forward(ctx, t):
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm (any of 1d/2d/3d) whose training statistics are those of the global batch:
    the per-channel count, sum and sum of squares are all-reduced (in float64) with a
    differentiable all-reduce, then the batch is normalised with the biased variance and
    the running statistics are updated with the unbiased one, exactly as ``BatchNorm``
    does for the whole batch. Same parameters and buffers as ``BatchNorm`` (state dicts
    are interchangeable). For CPU jobs, where ``torch.nn.SyncBatchNorm`` does not run."""

    def _check_input_dim(self, input):
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not (dist.is_available() and dist.is_initialized()):
            return super().forward(x)
        dims = [0] + list(range(2, x.dim()))
        n_local = x.numel() // x.shape[1]
        xd = x.double()
        stats = torch.cat([xd.sum(dims), (xd * xd).sum(dims), xd.new_full((1,), float(n_local))])
        stats = _AllReduceSum.apply(stats)
        c = x.shape[1]
        count = stats[2 * c]
        mean = stats[:c] / count
        var = (stats[c:2 * c] / count - mean * mean).clamp_min(0)
        shape = [1, c] + [1] * (x.dim() - 2)
        y = (xd - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        y = y.to(x.dtype)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = (1.0 / float(self.num_batches_tracked)) if self.momentum is None else self.momentum
                n = float(count)
                unbiased = var.detach() * (n / max(n - 1.0, 1.0))
                self.running_mean.mul_(1 - m).add_(mean.detach().to(self.running_mean.dtype), alpha=m)
                self.running_var.mul_(1 - m).add_(unbiased.to(self.running_var.dtype), alpha=m)
        return y


def convert_batchnorm(module: nn.Module, *, cuda: bool, skip: Optional[nn.Module] = None) -> int:
    """Replace, in place, every BatchNorm under ``module`` (except inside ``skip``, the
    teacher) by its global-batch version: ``nn.SyncBatchNorm`` when ``cuda``, else
    :class:`GlobalBatchNorm`. Parameters and buffers are the same objects (an optimizer
    built before still holds them). Returns how many layers were converted."""
    count = 0
    for name, child in list(module.named_children()):
        if skip is not None and child is skip:
            continue
        if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(child, (nn.SyncBatchNorm, GlobalBatchNorm)):
            cls = nn.SyncBatchNorm if cuda else GlobalBatchNorm
            new = cls(child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats)
            if child.affine:
                new.weight, new.bias = child.weight, child.bias
            new.running_mean, new.running_var = child.running_mean, child.running_var
            new.num_batches_tracked = child.num_batches_tracked
            new.train(child.training)
            setattr(module, name, new)
            count += 1
        else:
            count += convert_batchnorm(child, cuda=cuda, skip=skip)
    return count


def trained_parameters(optimizer) -> List[torch.Tensor]:
    return [p for g in optimizer.param_groups for p in g["params"]]
