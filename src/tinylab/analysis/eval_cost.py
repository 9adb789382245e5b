"""What one evaluation of a checkpoint costs before it runs, in tokens the model reads: the
benchmark items times an approximate length per item, the held-out windows of perplexity, and
HumanEval's prompts and completions. The cost planner (tinylab.analysis.cost) turns these tokens
into hours at a forward rate.

The item counts are those of the split each task is scored on (lm-eval's task configs;
InstructEval's test sets; HumanEval's 164 problems). The tokens per item are an estimate of what
is scored per item in the Llama-2 tokenizer: every choice with its context for log-likelihood
tasks, the few-shot prompt for InstructEval's generation tasks, prompt plus the longest completion
for HumanEval. Nothing here was measured, so the evaluation hours are approximate (within about
a factor of two); tasks not in TASK_SIZES (the offline suites) are not counted and named.

    tokens, uncounted = evaluation_tokens(eval_cfg, domains=4, seq_len=2048)
"""

from __future__ import annotations

from tinylab.config.eval import EvalConfig

# task: (items scored, approximate tokens read per item)
TASK_SIZES: dict[str, tuple[int, int]] = {
    "hellaswag": (10042, 420),  # validation; 4 endings x (context ~80 + ending ~25)
    "openbookqa": (500, 100),  # test; 4 choices x ~25
    "winogrande": (1267, 60),  # validation; 2 partial contexts x ~30
    "arc_easy": (2376, 160),  # test; ~4 choices x ~40
    "arc_challenge": (1172, 180),  # test; ~4 choices x ~45
    "boolq": (3270, 300),  # validation; 2 x (passage ~140 + question)
    "piqa": (1838, 100),  # validation; 2 x (goal + solution ~50)
    "xwinograd_zh": (504, 60),  # test; 2 x ~30
    "xstorycloze_zh": (1511, 160),  # validation; 2 x ~80
    "xcopa_zh": (500, 50),  # test; 2 x ~25
    "xnli_zh": (5010, 180),  # test; 3 x ~60
    "mmlu": (14042, 600),  # test; a 5-shot prompt, a few generated tokens
    "bbh": (6511, 900),  # 27 tasks; a 3-shot prompt and a short answer
    "drop": (9536, 1500),  # validation; a 3-shot prompt of passages
}
HUMANEVAL_PROBLEMS = 164
HUMANEVAL_PROMPT_TOKENS = 150  # the instruction and the function's signature and docstring


def evaluation_tokens(eval_cfg: EvalConfig, *, domains: int, seq_len: int) -> tuple[int, list[str]]:
    """Tokens one evaluation reads (a task's `limit` caps its items), and the tasks and suites it
    runs that are not counted."""
    tokens, uncounted = 0, list(eval_cfg.suites)
    for task in eval_cfg.tasks:
        if task.name not in TASK_SIZES:
            uncounted.append(task.name)
            continue
        items, per_item = TASK_SIZES[task.name]
        tokens += min(items, eval_cfg.limit or items) * per_item
    if eval_cfg.perplexity:
        tokens += domains * eval_cfg.perplexity_max_windows * seq_len
    humaneval = eval_cfg.humaneval
    if humaneval is not None:
        problems = min(HUMANEVAL_PROBLEMS, humaneval.limit or HUMANEVAL_PROBLEMS)
        per_problem = HUMANEVAL_PROMPT_TOKENS + humaneval.max_new_tokens
        tokens += problems * humaneval.num_samples * per_problem
    return tokens, uncounted
