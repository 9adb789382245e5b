"""tinylab.train: the stage runner (FSDP2, mixed precision, exact resume, HF export, metrics).
In a notebook or script, and under torchrun:

    from tinylab.train import train_stage
    result = train_stage("params/stages/demo/base.yaml", "outputs/runs/demo", nproc=1)
    torchrun --nproc-per-node 2 -m tinylab.train --config resolved.yaml --run-dir RUN
"""

from tinylab.train.batching import BatchPlan, MixtureWindows, RandomWindows, open_windows
from tinylab.train.checkpoint import TrainState, latest_checkpoint, list_checkpoints
from tinylab.train.launch import train_stage
from tinylab.train.loop import NonFiniteLossError, run_stage
from tinylab.train.schedule import lr_at, stage_lr

__all__ = [
    "BatchPlan",
    "MixtureWindows",
    "NonFiniteLossError",
    "RandomWindows",
    "TrainState",
    "latest_checkpoint",
    "list_checkpoints",
    "lr_at",
    "open_windows",
    "run_stage",
    "stage_lr",
    "train_stage",
]
