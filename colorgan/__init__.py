"""colorgan: learn to colorize black-and-white photographs with fastai, then colorize them.

Stage one (`pretrain`) trains a timm-bodied DynamicUnet on L1; stage two (`gan_finetune`) fine-tunes it against a
conditional PatchGAN. Both return fastai Learners a Python user can keep using.
"""
__version__ = "0.1.0"

_LAZY = {
    "pretrain": "train", "gan_finetune": "train", "pretrain_learner": "learner", "gan_learner": "gan",
    "photo_dls": "data", "build_generator": "models", "build_critic": "models", "load_generator": "artifacts",
    "save_generator": "artifacts",
    "Colorizer": "inference",
}


def __getattr__(name):  # import torch and fastai only when a user reaches for them: `colorgan --help` stays fast
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'colorgan' has no attribute '{name}'")


__all__ = ["__version__", *_LAZY]
