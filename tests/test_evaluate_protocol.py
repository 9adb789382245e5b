"""The evaluation protocol has one copy, the params file that runs: params/eval/paper.yaml holds
the paper's tasks, shots, headline metrics, chance levels, BOS and HumanEval settings
(docs/PAPER.md, "Evaluation protocol"); params/eval/demo.yaml keeps its rules on offline suites."""

from __future__ import annotations

import pytest

from tinylab.config.eval import EvalConfig
from tinylab.config.loader import PARAMS_DIR, load_config
from tinylab.evaluate import harness

PAPER = load_config(PARAMS_DIR / "eval" / "paper.yaml", EvalConfig)
DEMO = load_config(PARAMS_DIR / "eval" / "demo.yaml", EvalConfig)
TASKS = {task.name: task for task in PAPER.tasks}
COMMONSENSE = ("hellaswag", "openbookqa", "winogrande", "arc_easy", "arc_challenge", "boolq",
               "piqa")  # fmt: skip
CHINESE = ("xwinograd_zh", "xstorycloze_zh", "xcopa_zh", "xnli_zh")
PROBLEM_SOLVING = ("mmlu", "bbh_fewshot", "drop")


def test_the_paper_tasks_each_once() -> None:
    assert [t.name for t in PAPER.tasks] == [*COMMONSENSE, *CHINESE, *PROBLEM_SOLVING]


def test_commonsense_is_zero_shot_acc_norm_except_winogrande_and_boolq() -> None:
    metrics = {name: TASKS[name].metric for name in COMMONSENSE}
    assert metrics == {
        "hellaswag": "acc_norm", "openbookqa": "acc_norm", "winogrande": "acc",
        "arc_easy": "acc_norm", "arc_challenge": "acc_norm", "boolq": "acc", "piqa": "acc_norm",
    }  # fmt: skip
    assert all(TASKS[name].num_fewshot == 0 for name in COMMONSENSE)


def test_chinese_tasks_are_zero_shot_acc() -> None:
    assert all(TASKS[n].metric == "acc" and TASKS[n].num_fewshot == 0 for n in CHINESE)


def test_problem_solving_shots_and_metrics() -> None:
    shots = {name: (TASKS[name].num_fewshot, TASKS[name].metric) for name in PROBLEM_SOLVING}
    assert shots == {"mmlu": (5, "acc"), "bbh_fewshot": (3, "exact_match"), "drop": (3, "f1")}


def test_chance_is_uniform_guessing() -> None:
    chance = {name: task.chance for name, task in TASKS.items()}
    assert chance == {
        "hellaswag": 0.25, "openbookqa": 0.25, "winogrande": 0.5, "arc_easy": 0.25,
        "arc_challenge": 0.25, "boolq": 0.5, "piqa": 0.5, "xwinograd_zh": 0.5,
        "xstorycloze_zh": 0.5, "xcopa_zh": 0.5, "xnli_zh": pytest.approx(1 / 3),
        "mmlu": 0.25, "bbh_fewshot": None, "drop": 0.0,
    }  # fmt: skip


def test_bos_is_off_as_in_the_papers_harness() -> None:
    assert PAPER.add_bos_token is False and DEMO.add_bos_token is False


def test_humaneval_is_pass_at_1_sampled_at_t_0_1_with_3_s_per_program() -> None:
    humaneval = PAPER.humaneval
    assert humaneval is not None
    assert humaneval.temperature == 0.1 and humaneval.timeout_s == 3.0
    assert humaneval.ks[0] == 1  # the headline row is pass@1
    assert max(humaneval.ks) <= humaneval.num_samples


def test_the_demo_scores_like_the_paper() -> None:
    assert {t.metric for t in DEMO.tasks} <= {"acc", "acc_norm"}
    assert all(t.num_fewshot == 0 for t in DEMO.tasks)
    assert DEMO.humaneval is not None and DEMO.humaneval.ks == [1]


@pytest.mark.slow
def test_the_paper_tasks_exist_in_lm_eval() -> None:
    known = harness.task_manager([]).all_tasks
    assert [name for name in TASKS if name not in known] == []
