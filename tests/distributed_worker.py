"""Run by torchrun in test_distributed.py: a tiny pretrain then a tiny GAN fine-tune on every rank, then each
rank writes a digest of its generator's weights so the test can compare them."""
import hashlib
import sys
from pathlib import Path

import torch.distributed as dist

from colorgan.train import gan_finetune, pretrain

photos, out = Path(sys.argv[1]), Path(sys.argv[2])
tiny = {"data": {"size": 32, "bs": 4, "valid_pct": 0.25, "augment": True}, "fit": {"n_epoch": 2, "lr_max": 1e-3}}
learn = pretrain(photos, out / "g", recipe={**tiny, "model": {"pretrained": False}})
gan = gan_finetune(photos, out / "g", out / "gan", recipe={**tiny, "critic": {"n_filters": 8}})
rank = dist.get_rank()
for name, net in (("generator", gan.model), ("critic", gan.conditional_gan.critic)):
    digest = hashlib.sha256()
    for k, v in sorted(net.state_dict().items()):
        digest.update(k.encode() + v.detach().cpu().contiguous().numpy().tobytes())
    (out / f"{name}.rank{rank}.sha256").write_text(digest.hexdigest())
(out / f"history.rank{rank}.txt").write_text(repr(gan.recorder.values))
