"""tinylab: reproduce and extend TinyLlama's three-stage pretraining (its version: the package
metadata, `importlib.metadata.version("tinylab")`).

Importing it sets PyTorch's CUDA allocator to expandable segments (fewer fragmented blocks at
large micro-batches), unless PYTORCH_CUDA_ALLOC_CONF is already set: every training figure in
bench/RESULTS.md ran with it, and PyTorch reads the setting at the first CUDA allocation, so
this covers the notebooks, the CLI and the trainer's processes alike."""

import os

os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
