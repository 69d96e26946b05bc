"""adagrpo: noise-robust GRPO post-training of generative recommenders, on PyTorch Lightning."""

__version__ = "0.1.0"
