"""Several processes (GPUs, or CPU processes with gloo) under `torchrun` or `accelerate launch`, with no change for
the user: fastai's DistributedTrainer puts the generator in DDP (BatchNorm synced on GPUs) and splits every
batch across ranks; the critic is synced the same way by `ConditionalGAN`; metrics are reduced across ranks; only
rank 0 writes checkpoints, logs and sample grids.
"""
from __future__ import annotations

from contextlib import contextmanager, nullcontext

import torch
import torch.distributed as dist
from fastai.callback.progress import ProgressCallback
from fastai.distributed import DistributedDL, DistributedTrainer
from torch.nn.parallel import DistributedDataParallel as DDP
from fastai.torch_core import num_distrib, rank_distrib

__all__ = ["is_distributed", "distributed", "all_reduce_sum", "broadcast_object", "is_main_process",
           "init_distributed", "main_process_first", "wrap_ddp", "no_sync", "barrier", "sync_buffers"]


def is_distributed() -> bool: return num_distrib() > 1
def is_main_process() -> bool: return rank_distrib() == 0


def all_reduce_sum(x: torch.Tensor | float) -> torch.Tensor | float:
    "Sum a number or tensor over all ranks (itself when there is one process)."
    if not (dist.is_available() and dist.is_initialized()):
        return x
    t = torch.as_tensor(x, dtype=torch.float64, device=_comm_device()).clone()
    dist.all_reduce(t)
    return t if isinstance(x, torch.Tensor) else t.item()


def _comm_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


class _SplitDL(DistributedDL):
    "fastai's DistributedDL, with rank 0's shuffled order broadcast on the CPU too (fastai's assumes CUDA)."
    def _broadcast(self, t, rank):
        t = torch.tensor(t, dtype=torch.long, device=_comm_device())
        dist.broadcast(t, rank)
        return t.cpu().tolist()


class _Trainer(DistributedTrainer):
    def _wrap_dl(self, dl):
        return dl if isinstance(dl, DistributedDL) else _SplitDL(dl, device=getattr(self.learn.model, "device", None))


def init_distributed() -> None:
    "Join the process group that torchrun or accelerate launch describe (once; on CUDA, this rank's GPU)."
    if is_distributed() and not dist.is_initialized():
        from accelerate import PartialState
        PartialState(cpu=not torch.cuda.is_available())  # CPU processes: the gloo backend


def broadcast_object(obj):
    "Rank 0's picklable `obj` on every rank (itself when not distributed): one decision, shared."
    if not is_distributed():
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    "Every rank waits here for the others (after rank 0 wrote an artefact, say); nothing on one process."
    if is_distributed() and dist.is_initialized():
        dist.barrier()


@contextmanager
def main_process_first():
    "Rank 0 runs the block first (building the photo cache, say), then the others; plain on one process."
    if is_distributed() and not is_main_process():
        dist.barrier()
    yield
    if is_distributed() and is_main_process():
        dist.barrier()


def _sync_bn_here() -> bool:
    "torch's SyncBatchNorm runs on GPUs only; CPU ranks keep BatchNorm and DDP broadcasts rank 0's statistics."
    return dist.get_backend() == "nccl"


@contextmanager
def distributed(learn):
    "fastai's `distrib_ctx` for a colorgan Learner: DDP when launched on several processes, nothing otherwise."
    if not is_distributed():
        yield learn
        return
    # mixed_precision="no": colorgan's device policy decides the precision; accelerate's own (`accelerate launch
    # --mixed_precision`, or its config file) would otherwise wrap the generator in a second autocast
    learn.add_cb(_Trainer(sync_bn=_sync_bn_here(), cpu=not torch.cuda.is_available(), mixed_precision="no"))
    if not is_main_process():
        learn.remove_cb(ProgressCallback)
    try:
        yield learn
    finally:
        learn.detach_distributed()


def wrap_ddp(module: torch.nn.Module) -> torch.nn.Module:
    "A module in DDP with synced BatchNorm when several processes train; as it is otherwise."
    if not is_distributed() or isinstance(module, DDP):
        return module
    sync = _sync_bn_here()
    module = torch.nn.SyncBatchNorm.convert_sync_batchnorm(module) if sync else module
    device = next(module.parameters()).device
    return DDP(module, device_ids=[device] if device.type == "cuda" else None, broadcast_buffers=not sync)


def sync_buffers(module: torch.nn.Module) -> None:
    "Give every rank rank 0's buffers (BatchNorm statistics that CPU ranks without SyncBatchNorm keep apart)."
    if isinstance(module, DDP) and module.broadcast_buffers:
        for buf in module.module.buffers():
            dist.broadcast(buf.data, 0)


def no_sync(module: torch.nn.Module):
    "DDP's `no_sync` (accumulate locally, reduce on the next backward); a no-op for a plain module."
    return module.no_sync() if isinstance(module, DDP) else nullcontext()
