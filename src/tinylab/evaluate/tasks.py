"""The paper's benchmark table: which lm-eval tasks, how many shots, which headline metric, chance.

Facts from docs/PAPER.md ("Evaluation protocol"): commonsense tasks zero-shot, scored by acc_norm
except winogrande and boolq (acc); the Chinese variant on four XTREME-style tasks (acc); problem
solving (InstructEval) on MMLU 5-shot, BBH 3-shot, DROP 3-shot. Chance levels are what uniform
guessing scores (ARC has 3-5 choices per question: 0.25 is the usual approximation; BBH mixes
task types and has none). lm-eval's `bbh_fewshot` is the direct (non-CoT) 3-shot BBH. The table
is data, so params files name tasks and this fills in the rest.

    tinylab eval HF_DIR --params params/eval/paper.yaml --out outputs/runs/x/eval
"""

from __future__ import annotations

from dataclasses import dataclass

from tinylab.config import EvalTask


@dataclass(frozen=True)
class PaperTask:
    """One row of the paper's evaluation table."""

    name: str
    group: str  # commonsense | chinese | problem_solving
    num_fewshot: int
    metric: str
    chance: float | None


PAPER_TASKS: tuple[PaperTask, ...] = (
    PaperTask("hellaswag", "commonsense", 0, "acc_norm", 0.25),
    PaperTask("openbookqa", "commonsense", 0, "acc_norm", 0.25),
    PaperTask("winogrande", "commonsense", 0, "acc", 0.5),
    PaperTask("arc_easy", "commonsense", 0, "acc_norm", 0.25),
    PaperTask("arc_challenge", "commonsense", 0, "acc_norm", 0.25),
    PaperTask("boolq", "commonsense", 0, "acc", 0.5),
    PaperTask("piqa", "commonsense", 0, "acc_norm", 0.5),
    PaperTask("xwinograd_zh", "chinese", 0, "acc", 0.5),
    PaperTask("xstorycloze_zh", "chinese", 0, "acc", 0.5),
    PaperTask("xcopa_zh", "chinese", 0, "acc", 0.5),
    PaperTask("xnli_zh", "chinese", 0, "acc", 1 / 3),
    PaperTask("mmlu", "problem_solving", 5, "acc", 0.25),
    PaperTask("bbh_fewshot", "problem_solving", 3, "exact_match", None),
    PaperTask("drop", "problem_solving", 3, "f1", 0.0),
)
GROUPS = ("commonsense", "chinese", "problem_solving")


def paper_tasks(*groups: str) -> list[EvalTask]:
    """The paper's tasks of the given groups (default commonsense) as EvalTask entries."""
    groups = groups or ("commonsense",)
    unknown = set(groups) - set(GROUPS)
    if unknown:
        raise ValueError(f"unknown task groups {sorted(unknown)}; known: {list(GROUPS)}")
    return [
        EvalTask(name=t.name, num_fewshot=t.num_fewshot, metric=t.metric, chance=t.chance)
        for t in PAPER_TASKS
        if t.group in groups
    ]


def paper_task(name: str) -> PaperTask | None:
    """The paper's row for a task name, or None for tasks outside the paper's table."""
    return next((t for t in PAPER_TASKS if t.name == name), None)
