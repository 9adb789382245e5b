"""Causal attention kernels at tinyllama-1.1b's shape, measured in one run: PyTorch's SDPA
backends (cuDNN, FlashAttention-2, memory-efficient) against FlashAttention-4 (flash-attn-4's
`flash_attn.cute`), forward and forward+backward.

Needs only torch (and flash-attn-4 for its row), so it runs on a GPU machine before tinylab's
wheelhouse is installed. Inputs are laid out as the model makes them: q/k/v projected as
[batch, tokens, heads, head_dim], then transposed for SDPA (GQA through `enable_gqa`, as
transformers calls it) and passed as they are to FA4. Each kernel's first call is timed on its
own (FA4 compiles its kernels then), then `--iters` calls after `--warmup`, with CUDA events.
TFLOP/s counts the causal half of 4*B*H*T^2*D per forward and 2.5x that per backward. Errors
are the largest |difference| from an fp32 math-backend reference on the first `--check-batch`
sequences (output and the three input gradients): bf16's rounding of the largest values bounds
them from below.

    python bench/attention_kernels.py
    python bench/attention_kernels.py --batch 16 --seq 2048 --heads 32 --kv-heads 4 --head-dim 64
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

SDPA_BACKENDS = {
    "sdpa-cudnn": SDPBackend.CUDNN_ATTENTION,
    "sdpa-flash": SDPBackend.FLASH_ATTENTION,
    "sdpa-efficient": SDPBackend.EFFICIENT_ATTENTION,
}


def sdpa(backend: SDPBackend | None) -> Callable:
    """SDPA on [B, T, H, D] inputs as transformers calls it; `None`: PyTorch's own choice."""

    def call(q, k, v, scale):
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        if backend is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale,
                                                 enable_gqa=True)  # fmt: skip
        else:
            with sdpa_kernel(backend):
                out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale,
                                                     enable_gqa=True)  # fmt: skip
        return out.transpose(1, 2)

    return call


def fa4(q, k, v, scale):
    from flash_attn.cute import flash_attn_func

    return flash_attn_func(q, k, v, softmax_scale=scale, causal=True)[0]


def reference(q, k, v, scale):
    """fp32 math backend on [B, T, H, D]."""
    q, k, v = (t.float().transpose(1, 2) for t in (q, k, v))
    with sdpa_kernel(SDPBackend.MATH):
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=True)
    return out.transpose(1, 2)


def inputs(args, batch: int, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator(device="cuda").manual_seed(seed)
    heads = (args.heads, args.kv_heads, args.kv_heads)
    shapes = [(batch, args.seq, h, args.head_dim) for h in heads]
    return [torch.randn(s, device="cuda", dtype=torch.bfloat16, generator=gen).requires_grad_()
            for s in shapes]  # fmt: skip


def timed(fn: Callable, iters: int) -> float:
    """Mean milliseconds of `fn` over `iters` calls (CUDA events)."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters


def errors(kernel: Callable, args, scale: float) -> tuple[float, float]:
    """Largest |output difference| and |gradient difference| from the fp32 reference."""
    q, k, v = inputs(args, args.check_batch, seed=1)
    grad = torch.randn(q.shape, device="cuda", dtype=torch.bfloat16)
    out = kernel(q, k, v, scale)
    got = torch.autograd.grad(out, (q, k, v), grad)
    ref_out = reference(q, k, v, scale)
    want = torch.autograd.grad(ref_out, (q, k, v), grad.float())
    grad_err = max((a.float() - b).abs().max().item() for a, b in zip(got, want, strict=True))
    return (out.float() - ref_out).abs().max().item(), grad_err


def measure(name: str, kernel: Callable, args, flops: float) -> dict:
    scale = args.head_dim**-0.5
    q, k, v = inputs(args, args.batch)
    grad = torch.randn(q.shape, device="cuda", dtype=torch.bfloat16)

    def forward():
        with torch.no_grad():
            kernel(q, k, v, scale)

    def forward_backward():
        torch.autograd.grad(kernel(q, k, v, scale), (q, k, v), grad)

    row = {"kernel": name}
    try:
        torch.cuda.synchronize()
        started = time.perf_counter()
        forward_backward()
        torch.cuda.synchronize()
        row["first_s"] = time.perf_counter() - started
        for _ in range(args.warmup):  # both: cuDNN builds a graph for each on its first calls
            forward()
            forward_backward()
        row["fwd_ms"] = timed(forward, args.iters)
        row["fwd_bwd_ms"] = timed(forward_backward, args.iters)
        row["fwd_tflops"] = flops / row["fwd_ms"] / 1e9
        row["fwd_bwd_tflops"] = 3.5 * flops / row["fwd_bwd_ms"] / 1e9
        row["out_err"], row["grad_err"] = errors(kernel, args, scale)
    except Exception as err:  # a refused shape or a missing package: the row says why
        row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:120]}"
    return row


def table(rows: list[dict]) -> str:
    lines = ["| kernel | first call s | fwd ms | fwd TFLOP/s | fwd+bwd ms | fwd+bwd TFLOP/s | "
             "max out err | max grad err |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['kernel']} | {r['error']} |||||||")
            continue
        lines.append(
            f"| {r['kernel']} | {r['first_s']:.2f} | {r['fwd_ms']:.3f} | {r['fwd_tflops']:.0f} | "
            f"{r['fwd_bwd_ms']:.3f} | {r['fwd_bwd_tflops']:.0f} | {r['out_err']:.2e} | "
            f"{r['grad_err']:.2e} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--kv-heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--check-batch", type=int, default=2)
    names = [*SDPA_BACKENDS, "sdpa-auto", "fa4"]
    parser.add_argument("--kernels", nargs="+", default=names, choices=names)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench/attention_kernels.py needs a CUDA GPU")
    kernels = {name: sdpa(backend) for name, backend in SDPA_BACKENDS.items()}
    kernels.update({"sdpa-auto": sdpa(None), "fa4": fa4})
    flops = 4 * args.batch * args.heads * args.seq**2 * args.head_dim / 2
    print(
        f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}; B={args.batch} "
        f"T={args.seq} H={args.heads} H_kv={args.kv_heads} D={args.head_dim}; bf16, causal"
    )
    rows = [measure(name, kernels[name], args, flops) for name in args.kernels]
    print(table(rows))


if __name__ == "__main__":
    main()
