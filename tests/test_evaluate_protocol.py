"""The evaluation protocol has one copy, the params file that runs: params/eval/paper.yaml holds
the paper's tasks, who scores each, shots, headline metrics, chance levels, BOS, dtype and
HumanEval settings (docs/PAPER.md, "Evaluation protocol"); params/eval/demo.yaml keeps its rules
on offline suites. The schema refuses a protocol a task does not have, with one clear error."""

from __future__ import annotations

from pathlib import Path

import pytest

from tinylab.config.eval import EvalConfig
from tinylab.config.loader import PARAMS_DIR, ConfigError, load_config
from tinylab.evaluate import harness

PAPER = load_config(PARAMS_DIR / "eval" / "paper.yaml", EvalConfig)
DEMO = load_config(PARAMS_DIR / "eval" / "demo.yaml", EvalConfig)
TASKS = {task.name: task for task in PAPER.tasks}
COMMONSENSE = ("hellaswag", "openbookqa", "winogrande", "arc_easy", "arc_challenge", "boolq",
               "piqa")  # fmt: skip
CHINESE = ("xwinograd_zh", "xstorycloze_zh", "xcopa_zh", "xnli_zh")
PROBLEM_SOLVING = ("mmlu", "bbh", "drop")


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


def test_problem_solving_is_instructeval_with_its_shots() -> None:
    shots = {name: (TASKS[name].num_fewshot, TASKS[name].metric) for name in PROBLEM_SOLVING}
    assert shots == {"mmlu": (5, "acc"), "bbh": (3, "acc"), "drop": (3, "acc")}
    protocols = {task.name: task.protocol for task in PAPER.tasks}
    assert {n for n, p in protocols.items() if p == "instructeval"} == set(PROBLEM_SOLVING)
    assert all(task.protocol == "lm_eval" for task in DEMO.tasks)  # the demo: unchanged


def test_the_paper_runs_in_float32_and_the_demo_as_before() -> None:
    assert PAPER.dtype == "float32"  # EVAL.md: dtype="float"
    assert DEMO.dtype == "auto" and DEMO.device == "cpu"  # auto on cpu: float32, as before


def test_chance_is_uniform_guessing() -> None:
    chance = {name: task.chance for name, task in TASKS.items()}
    assert chance == {
        "hellaswag": 0.25, "openbookqa": 0.25, "winogrande": 0.5, "arc_easy": 0.25,
        "arc_challenge": 0.25, "boolq": 0.5, "piqa": 0.5, "xwinograd_zh": 0.5,
        "xstorycloze_zh": 0.5, "xcopa_zh": 0.5, "xnli_zh": pytest.approx(1 / 3),
        "mmlu": 0.25, "bbh": None, "drop": 0.0,
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
    lm_eval_tasks = [task.name for task in PAPER.tasks if task.protocol == "lm_eval"]
    assert [name for name in lm_eval_tasks if name not in known] == []
    assert {"mmlu", "bbh_fewshot", "drop"} <= set(known)  # lm-eval's versions, by their names


@pytest.mark.parametrize(
    ("tasks", "message"),
    [
        ("[{name: hellaswag, protocol: instructeval}]",
         "tasks.0 = .*protocol instructeval scores mmlu, bbh, drop only, not 'hellaswag'"),
        ("[{name: drop, protocol: instructeval, metric: f1}]",
         "protocol instructeval reports acc .*not 'f1'"),
        ("[{name: mmlu, protocol: helm}]",
         "tasks.0.protocol = 'helm': .*'lm_eval' or 'instructeval'"),
        ("[{name: mmlu}, {name: mmlu, protocol: instructeval}]",
         "tasks = .*\\['mmlu'\\] appear more than once"),
    ],
)  # fmt: skip
def test_a_wrong_protocol_is_one_clear_error(tmp_path: Path, tasks: str, message: str) -> None:
    path = tmp_path / "eval.yaml"
    path.write_text(f"tasks: {tasks}\n")
    with pytest.raises(ConfigError, match=message) as err:
        load_config(path, EvalConfig)
    assert str(path) in str(err.value) and "1 invalid value(s)" in str(err.value)


def test_a_wrong_dtype_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "eval.yaml"
    path.write_text("dtype: float16\n")
    with pytest.raises(ConfigError, match="dtype = 'float16': .*'auto', 'float32' or 'bfloat16'"):
        load_config(path, EvalConfig)
