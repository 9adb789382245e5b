"""Evaluation speed: forward-only tokens/s of a model preset as lm-eval scores it, in bf16 and in
float32 (the paper's evaluation dtype, params/eval/paper.yaml), for the cost planner's evaluation
hours (params/hardware/, tinylab.analysis.cost).

Each configuration builds the preset (TinyLlama's init; speed does not depend on the weights) in
the dtype, in eval mode, with SDPA attention, and times `--iters` forwards of `batch x length`
random tokens under `torch.no_grad()` after `--warmup` untimed ones, with the logits computed as
lm-eval computes them (the whole 32,000-wide output). float32 runs without TF32, PyTorch's
default and what tinylab's evaluation does. Tokens/s = batch x length x iters / seconds
(CUDA-synchronised); TFLOP/s at the project's forward FLOPs (a third of
tinylab.model.flops_per_token at that length).

    python bench/eval_forward.py --shapes 32x256 32x512 16x2048
"""

from __future__ import annotations

import argparse
import time

import torch

from tinylab.config.loader import PARAMS_DIR, load_config
from tinylab.config.model import ModelConfig
from tinylab.model import build_model, flops_per_token

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def time_forward(model, batch: int, length: int, *, warmup: int, iters: int) -> float:
    """Seconds of `iters` forwards of a random batch (after `warmup` untimed ones)."""
    tokens = torch.randint(0, model.config.vocab_size, (batch, length), device="cuda")
    with torch.no_grad():
        for _ in range(warmup):
            model(tokens, use_cache=False).logits.float().log_softmax(-1)
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(iters):
            model(tokens, use_cache=False).logits.float().log_softmax(-1)
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tinyllama-1.1b")
    parser.add_argument("--shapes", nargs="+", default=["32x256", "32x512", "16x2048"])
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iters", type=int, default=10)
    args = parser.parse_args()
    cfg = load_config(PARAMS_DIR / "models" / f"{args.model}.yaml", ModelConfig)
    cfg = cfg.model_copy(update={"attention": "sdpa"})
    print(f"{torch.cuda.get_device_name(0)}; torch {torch.__version__}; model {args.model}")
    print("| dtype | batch x length | tokens/s | TFLOP/s (forward) |")
    print("|---|---|---|---|")
    for name in args.dtypes:
        model = build_model(cfg, device="cuda", seed=0).to(DTYPES[name]).eval()
        for shape in args.shapes:
            batch, length = map(int, shape.split("x"))
            seconds = time_forward(model, batch, length, warmup=args.warmup, iters=args.iters)
            rate = batch * length * args.iters / seconds
            tflops = rate * flops_per_token(cfg, length) / 3 / 1e12
            print(f"| {name} | {batch} x {length} | {rate:,.0f} | {tflops:.0f} |", flush=True)
        del model
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
