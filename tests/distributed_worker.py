"""Run by torchrun in test_distributed.py: a tiny pretrain then a tiny GAN fine-tune on every rank, then each
rank writes a digest of its generator's weights and the dtypes its convolutions computed in, so the test can
compare them."""
import hashlib
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from colorgan.train import gan_finetune, pretrain

photos, out = Path(sys.argv[1]), Path(sys.argv[2])
dtypes, conv_forward = set(), torch.nn.Conv2d.forward


def recording_forward(self, x):
    y = conv_forward(self, x)
    dtypes.add(str(y.dtype))
    return y


torch.nn.Conv2d.forward = recording_forward
mode = sys.argv[3] if len(sys.argv) > 3 else "plain"
budget = mode == "budget"  # --minutes with bf16: every rank times, one plan
resume = mode == "resume"  # one epoch, then --resume to the second, from the recorded device
tiny = {"data": {"size": 32, "bs": 4, "valid_pct": 0.25, "augment": True},
        "fit": {"minutes": 0.3} if budget else {"n_epoch": 1 if resume else 2, "lr_max": 1e-3},
        "learner": {"precision": "bf16" if budget else "fp32"}}
started = time.perf_counter()
learn = pretrain(photos, out / "g", recipe={**tiny, "model": {"pretrained": False, "width": 0.25}})
seconds = {"g": time.perf_counter() - started}
if resume:
    learn = pretrain(photos, out / "g", resume=True, overrides=["fit.n_epoch=2"])
started = time.perf_counter()
gan = gan_finetune(photos, out / "g", out / "gan", recipe={**tiny, "critic": {"n_filters": 8}})
seconds["gan"] = time.perf_counter() - started
if resume:
    gan = gan_finetune(photos, out / "g", out / "gan", resume=True, overrides=["fit.n_epoch=2"])
rank = dist.get_rank()
for stage, run in (("g", learn), ("gan", gan)):
    (out / f"plan.{stage}.rank{rank}.txt").write_text(f"{run.n_epoch} x {run.dls.train.epoch_batches}")
    (out / f"seconds.{stage}.rank{rank}.txt").write_text(f"{seconds[stage]:.2f}")
if budget:
    sys.exit(0)
for name, net in (("generator", gan.model), ("critic", gan.conditional_gan.critic)):
    digest = hashlib.sha256()
    for k, v in sorted(net.state_dict().items()):
        digest.update(k.encode() + v.detach().cpu().contiguous().numpy().tobytes())
    (out / f"{name}.rank{rank}.sha256").write_text(digest.hexdigest())
(out / f"history.rank{rank}.txt").write_text(repr(gan.recorder.values))
(out / f"dtypes.rank{rank}.txt").write_text(" ".join(sorted(dtypes)))
