"""bench/attention_kernels.py on CPU: the reference it measures errors against, the table's rows
(a refused kernel's row says why), and its refusals (no GPU, an unknown kernel)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "attention_kernels.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("attention_kernels", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_reference_is_causal_gqa_attention_in_the_models_layout(bench) -> None:
    q, k, v = (torch.randn(2, 16, h, 8) for h in (4, 2, 2))  # [B, T, H, D]
    want = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.repeat_interleave(2, 2).transpose(1, 2),
        v.repeat_interleave(2, 2).transpose(1, 2), is_causal=True, scale=0.5,
    ).transpose(1, 2)  # fmt: skip
    torch.testing.assert_close(bench.reference(q, k, v, 0.5), want)
    torch.testing.assert_close(bench.sdpa(None)(q, k, v, 0.5), want)


def test_the_table_gives_each_kernels_row_or_why_it_has_none(bench) -> None:
    rows = [
        {"kernel": "fa4", "first_s": 8.5, "fwd_ms": 0.649, "fwd_tflops": 424.0,
         "fwd_bwd_ms": 2.387, "fwd_bwd_tflops": 403.0, "out_err": 8.54e-3, "grad_err": 6.25e-2},
        {"kernel": "sdpa-efficient", "error": "RuntimeError: No available kernel."},
    ]  # fmt: skip
    lines = bench.table(rows).splitlines()
    assert lines[2] == "| fa4 | 8.50 | 0.649 | 424 | 2.387 | 403 | 8.54e-03 | 6.25e-02 |"
    assert lines[3].startswith("| sdpa-efficient | RuntimeError: No available kernel. |")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without a GPU")
def test_without_a_gpu_it_says_so_and_exits_non_zero() -> None:
    done = subprocess.run([sys.executable, SCRIPT], capture_output=True, text=True)
    assert done.returncode == 1 and "needs a CUDA GPU" in done.stderr


def test_an_unknown_kernel_is_refused_naming_the_choices() -> None:
    done = subprocess.run([sys.executable, SCRIPT, "--kernels", "xformers"], capture_output=True,
                          text=True)  # fmt: skip
    assert done.returncode == 2 and "invalid choice: 'xformers'" in done.stderr
    assert "sdpa-cudnn" in done.stderr and "fa4" in done.stderr
