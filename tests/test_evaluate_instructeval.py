"""tinylab.evaluate.instructeval: InstructEval's MMLU, BBH and DROP rules (declare-lab/instruct-eval
mmlu.py, bbh.py, drop.py, modeling.py). Scores of fixed model outputs are worked out by hand from
its rules; the prompts are written out in full; the end-to-end run uses a tiny model on tiny
fixture data served in place of the hub (`instructeval.load_dataset`)."""

from __future__ import annotations

import os
import random
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from _evaluate_fixtures import TINY_MODEL, tiny_hf_dir, tiny_tokenizer
from datasets import Dataset

from tinylab.config.eval import EvalConfig, EvalTask
from tinylab.evaluate import instructeval, runner
from tinylab.evaluate.errors import EvalError
from tinylab.evaluate.instructeval import Example, Subtask
from tinylab.evaluate.results import load_results
from tinylab.model import build_model

MMLU_TASK = EvalTask(name="mmlu", protocol="instructeval", num_fewshot=5, chance=0.25)
BBH_TASK = EvalTask(name="bbh", protocol="instructeval", num_fewshot=3)
DROP_TASK = EvalTask(name="drop", protocol="instructeval", num_fewshot=3, chance=0.0)

# cais/mmlu rows ("all" config): question, subject, choices, answer (0-3). The dev column of
# choice A is all numbers, one with decimals: pandas reads it as floats, so 2 prints as 2.0.
ALGEBRA_DEV = [
    ("Find the order of 2 in Z_4.", ["0.5", "1", "2", "4"], 2),
    ("Which is a field?", ["2", "None", "Q", "Z"], 2),
    ("How many elements has S_3?", ["3", "a group", "6", "9"], 2),
    ("What is 2*3 in Z_5?", ["1", "0", "6", "5"], 0),
    ("Which group is cyclic?", ["4", "Z_2 x Z_2", "S_3", "Z_4"], 3),
]
ALGEBRA_TEST = [
    ("Find the order of 3 in Z_6.", ["1", "2", "3", "6"], 1),
    ("Is Z_7 a field?", ["Yes", "No", "Only mod 2", "Never"], 0),
    ("What is 4+4 in Z_5?", ["3", "8", "0", "4"], 0),
]
PHYSICS_DEV = [
    (f"Physics question {i}?", [f"p{i}a", f"p{i}b", f"p{i}c", f"p{i}d"], i % 4) for i in range(5)
]
PHYSICS_TEST = [
    ("What is the unit of force?", ["joule", "watt", "newton", "pascal"], 2),
    ("What is the SI unit of charge?", ["volt", "ohm", "ampere", "coulomb"], 3),
]
BBH_ROWS = {
    "boolean_expressions": [
        ("not ( True ) and ( True ) is", "False"),
        ("True and not not ( not False ) is", "True"),
        ("not True or ( False and True ) is", "False"),
        ("True or not False and False is", "True"),
        ("not not ( False ) is", "False"),
    ],
    "navigate": [(f"Take {i} steps forward. Do you return?", "Yes" if i % 2 else "No")
                 for i in range(6)],
}  # fmt: skip
P1 = "  The Bears beat the Lions 24-21. Smith kicked a 1,000-yard field goal of 45 yards.\n"
P2, P3 = "The Bears won by 3 points over the Packers.", "Smith kicked twice for the Lions."
P4, P5 = "Jones caught 2 touchdowns.", "The Lions scored in the second quarter."
DROP_ROWS = [  # (passage, question, gold spans)
    (P1, "How many yards? ", ["1,000", " 1,000 "]),  # spans agree once stripped: kept
    (P1, "Who scored first?", ["Smith", "Jones"]),  # spans disagree: left out
    (P2, "Which team won?", ["Bears"]),
    (P2, "How many points?", ["3"]),
    (P3, "Who kicked?", ["Smith"]),
    (P4, "How many touchdowns?", ["2"]),
    (P5, "Which quarter?", ["second"]),
    (P5, "What happened?", []),  # no answer: left out
    (P1, "How long was the kick?", ["45"]),
]


def _mmlu_rows(subject: str, items: list) -> list[dict]:
    return [{"question": q, "subject": subject, "choices": c, "answer": a} for q, c, a in items]


def fake_load_dataset(path: str, name: str | None = None, *, split: str) -> Dataset:
    """The hub datasets InstructEval reads, as tiny fixtures (hub format, Dataset objects)."""
    if (path, name) == instructeval.MMLU:
        algebra = ALGEBRA_DEV if split == "dev" else ALGEBRA_TEST
        physics = PHYSICS_DEV if split == "dev" else PHYSICS_TEST
        # physics first: subjects are scored in sorted order whatever the hub's order
        rows = _mmlu_rows("high_school_physics", physics) + _mmlu_rows("abstract_algebra", algebra)
        return Dataset.from_list(rows)
    if path == instructeval.BBH and split == "test":
        return Dataset.from_list([{"input": i, "target": t} for i, t in BBH_ROWS[name]])
    if path == instructeval.DROP and split == "validation":
        rows = [
            {"section_id": f"s{i}", "query_id": f"q{i}", "passage": p, "question": q,
             "answers_spans": {"spans": spans, "types": ["span"] * len(spans)}}
            for i, (p, q, spans) in enumerate(DROP_ROWS)
        ]  # fmt: skip
        return Dataset.from_list(rows)
    raise AssertionError(f"unexpected load_dataset({path!r}, {name!r}, split={split!r})")


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(instructeval, "load_dataset", fake_load_dataset)
    monkeypatch.setattr(instructeval, "BBH_TASKS", tuple(BBH_ROWS))


# --------------------------------------------------------------------------------------------
# Matching and scores


@pytest.mark.parametrize(
    ("prediction", "label", "correct"),
    [
        (" B", "B", True),  # the space after "Answer:" is stripped
        ("A) Yes", "A", True),  # anything may follow the label
        ("\n True\n\nnot False is", "True", True),  # BBH: the next question follows
        (" c", "C", False),  # case matters
        ("The answer is A", "A", False),  # the label must come first
        ("", "A", False),
        ("34", "3", True),  # DROP: a prefix of the digits counts, as InstructEval counts it
        ("John Smith", "Smith", False),
    ],
)
def test_a_prediction_is_correct_when_it_starts_with_the_label(
    prediction: str, label: str, correct: bool
) -> None:
    assert instructeval.is_correct(prediction, label) is correct


def _records(groups: dict[str, list[bool]]) -> list[dict]:
    return [{"subtask": name, "correct": c} for name, correct in groups.items() for c in correct]


def test_mmlu_and_drop_average_over_questions() -> None:
    scored = instructeval.score(
        _records({"a": [True, False, True, True], "b": [False]}), mean_of_subtasks=False
    )
    # 3 of 5; sample variance (3 * 0.4^2 + 2 * 0.6^2) / 4 = 0.3, stderr sqrt(0.3 / 5)
    assert scored["value"] == pytest.approx(0.6)
    assert scored["stderr"] == pytest.approx(0.3**0.5 / 5**0.5)
    assert scored["n"] == 5 and scored["subtasks"] == {"a": 0.75, "b": 0.0}


def test_bbh_averages_over_tasks() -> None:
    scored = instructeval.score(
        _records({"a": [True, False, True, True], "b": [False, True]}), mean_of_subtasks=True
    )
    # (3/4 + 1/2) / 2, not 4/6; task stderrs 0.5/2 = 0.25 and 0.7071/1.4142 = 0.5
    assert scored["value"] == pytest.approx(0.625)
    assert scored["stderr"] == pytest.approx((0.25**2 + 0.5**2) ** 0.5 / 2)
    assert scored["n"] == 6


# --------------------------------------------------------------------------------------------
# Prompts and shots


def test_mmlu_prompt_is_hendrycks_format_with_cells_as_pandas_reads_them(hub) -> None:
    subjects = instructeval.mmlu_subtasks(5)
    assert [s.name for s in subjects] == ["abstract_algebra", "high_school_physics"]
    algebra = subjects[0]
    assert len(algebra.shots) == 5 and len(algebra.tests) == 3
    assert algebra.prompt(algebra.tests[0], 2) == (
        "The following are multiple choice questions (with answers) about  abstract algebra.\n\n"
        "Find the order of 2 in Z_4.\nA. 0.5\nB. 1\nC. 2\nD. 4\nAnswer: C\n\n"
        "Which is a field?\nA. 2.0\nB. nan\nC. Q\nD. Z\nAnswer: C\n\n"
        "Find the order of 3 in Z_6.\nA. 1\nB. 2\nC. 3\nD. 6\nAnswer:"
    )
    assert [t.answer for t in algebra.tests] == ["B", "A", "A"]
    assert len(instructeval.mmlu_subtasks(1)[0].shots) == 1  # the first k dev questions


def test_bbh_shots_are_the_first_rows_and_the_rest_is_scored(hub) -> None:
    boolean, navigate = instructeval.bbh_subtasks(3)
    assert [t.answer for t in boolean.tests] == ["True", "False"] and len(navigate.tests) == 3
    assert boolean.prompt(boolean.tests[0], 3) == (
        "not ( True ) and ( True ) is\nAnswer: False\n\n"
        "True and not not ( not False ) is\nAnswer: True\n\n"
        "not True or ( False and True ) is\nAnswer: False\n\n"
        "True or not False and False is\nAnswer:"
    )


def test_drop_keeps_agreeing_answers_and_draws_shots_with_seed_0(hub) -> None:
    (drop,) = instructeval.drop_subtasks(3)
    kept = [0, 2, 3, 4, 5, 6, 8]  # rows whose stripped spans agree
    random.seed(0)  # drop.py: random.seed(0); random.sample(samples, k=3)
    drawn = [kept[i] for i in random.sample(range(len(kept)), k=3)]
    assert drawn == [8, 4, 6]
    assert [s.answer for s in drop.shots] == ["45", "Smith", "second"]
    # P1 gave a shot, so its other question (row 0) is not scored; P2 and P4 are
    assert [t.answer for t in drop.tests] == ["Bears", "3", "2"]
    assert drop.prompt(drop.tests[0], 3) == (
        f"{P1.strip()} How long was the kick?\nAnswer: 45\n\n"
        f"{P3} Who kicked?\nAnswer: Smith\n\n"
        f"{P5} Which quarter?\nAnswer: second\n\n"
        f"{P2} Which team won?\nAnswer:"
    )


def test_prompts_start_with_bos_and_drop_shots_to_fit() -> None:
    tok = tiny_tokenizer()
    ids = instructeval.encode(tok, "Answer:")
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
    shots = tuple(Example(f"Question number {i} is long enough", str(i)) for i in range(3))
    subtask = Subtask("s", "Header.\n\n", shots, (Example("Last question", "x"),))
    test = subtask.tests[0]
    one_shot = len(instructeval.encode(tok, subtask.prompt(test, 1)))
    fitted = instructeval.fit_prompt(tok, subtask, test, num_shots=3, max_tokens=one_shot)
    assert fitted == (instructeval.encode(tok, subtask.prompt(test, 1)), 1)
    _, shots_left = instructeval.fit_prompt(tok, subtask, test, num_shots=3, max_tokens=1)
    assert shots_left == 0  # too long even without shots: asked anyway, as InstructEval does


# --------------------------------------------------------------------------------------------
# Fixed model outputs through the whole task


FIXED = {  # predictions in question order, and the score worked out by hand
    "mmlu": ([" B", "A) Yes", "B", " c", "D\n\nThe following"], 3 / 5, 2),  # labels B A A C D
    "bbh": (["True\n\nQ: not", "True", " Yes", "No, because", "Yes."], (1 / 2 + 3 / 3) / 2, 32),
    "drop": (["Bears won", "34", "two"], 2 / 3, 8),  # labels Bears 3 2
}


@pytest.mark.parametrize("task", [MMLU_TASK, BBH_TASK, DROP_TASK], ids=lambda t: t.name)
def test_fixed_outputs_score_as_worked_out_by_hand(
    hub, task: EvalTask, monkeypatch: pytest.MonkeyPatch
) -> None:
    outputs, expected, max_new_tokens = FIXED[task.name]
    tok = tiny_tokenizer()
    prompts: list[str] = []

    def fixed(model, tokenizer, ids, *, max_new_tokens, batch_size):
        prompts.extend(tokenizer.decode(i) for i in ids)
        assert max_new_tokens == FIXED[task.name][2]
        return outputs

    monkeypatch.setattr(instructeval, "greedy_completions", fixed)
    model = SimpleNamespace(config=SimpleNamespace(max_position_embeddings=4096))
    row, records = instructeval.evaluate_task(model, tok, task)
    assert row["value"] == pytest.approx(expected) and row["n"] == len(outputs)
    assert row["metric"] == "acc" and row["metrics"] == {"acc": row["value"]}
    assert [r["prediction"] for r in records] == outputs
    assert all(r["shots"] == task.num_fewshot for r in records)
    assert all(p.startswith("<s>") and p.endswith("\nAnswer:") for p in prompts)


def test_limit_takes_the_first_questions_of_each_subtask(hub, monkeypatch) -> None:
    monkeypatch.setattr(
        instructeval, "greedy_completions", lambda m, t, ids, **kw: ["x"] * len(ids)
    )
    model = SimpleNamespace(config=SimpleNamespace(max_position_embeddings=4096))
    _, records = instructeval.evaluate_task(model, tiny_tokenizer(), BBH_TASK, limit=1)
    assert [(r["subtask"], r["doc_id"]) for r in records] == [
        ("boolean_expressions", 0), ("navigate", 0)
    ]  # fmt: skip


def test_a_dataset_without_questions_is_a_clear_error(hub, monkeypatch) -> None:
    monkeypatch.setitem(BBH_ROWS, "navigate", BBH_ROWS["navigate"][:3])
    monkeypatch.setitem(BBH_ROWS, "boolean_expressions", BBH_ROWS["boolean_expressions"][:3])
    model = SimpleNamespace(config=SimpleNamespace(max_position_embeddings=4096))
    with pytest.raises(EvalError, match="bbh: its dataset has no questions"):
        instructeval.evaluate_task(model, tiny_tokenizer(), BBH_TASK)


# --------------------------------------------------------------------------------------------
# A tiny model end to end


def test_batched_generation_equals_one_prompt_at_a_time(one_thread) -> None:
    model = build_model(TINY_MODEL, seed=0).eval()
    tok = tiny_tokenizer()
    texts = ["Answer:", "The quick brown fox jumps over the lazy dog. Answer:", "def add(a, b):"]
    prompts = [instructeval.encode(tok, t) for t in texts]
    one = instructeval.greedy_completions(model, tok, prompts, max_new_tokens=6, batch_size=1)
    batched = instructeval.greedy_completions(model, tok, prompts, max_new_tokens=6, batch_size=3)
    assert one == batched and all(one)


def test_end_to_end_on_a_tiny_model(hub, tmp_path: Path, monkeypatch, one_thread) -> None:
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    hf = tiny_hf_dir(tmp_path / "hf")
    cfg = EvalConfig(
        tasks=[MMLU_TASK, BBH_TASK, DROP_TASK], device="cpu", batch_size=4, perplexity=False
    )
    results = runner.evaluate_checkpoint(hf, cfg, tmp_path / "eval", name="base")
    assert results == load_results(tmp_path / "eval" / "base.json")
    rows = {row["task"]: row for row in results["results"]}
    assert list(rows) == ["mmlu", "bbh", "drop"]
    assert {name: row["n"] for name, row in rows.items()} == {"mmlu": 5, "bbh": 5, "drop": 3}
    for row in rows.values():
        assert 0.0 <= row["value"] <= 1.0
        assert row["protocol"] == "instructeval" and row["kind"] == "instructeval"
        assert row["dtype"] == "float32" and row["bos_prepended"] is True
        assert row["harness"].startswith("tinylab instructeval (declare-lab/instruct-eval@")
        assert row["settings"]["dtype"] == "float32" and row["settings"]["add_bos_token"]
    assert rows["mmlu"]["chance"] == 0.25 and rows["bbh"]["chance"] is None
    assert set(rows["bbh"]["subtasks"]) == set(BBH_ROWS)
    samples = (tmp_path / "eval" / "base.samples.jsonl").read_text().splitlines()
    assert len(samples) == 13
    # stored rows are reused: the model is not loaded again
    monkeypatch.setattr(runner, "load_hf", lambda *a, **k: pytest.fail("model loaded"))
    assert runner.evaluate_checkpoint(hf, cfg, tmp_path / "eval", name="base") == results


def test_bf16_is_recorded_and_not_mistaken_for_fp32(hub, tmp_path: Path, one_thread) -> None:
    hf = tiny_hf_dir(tmp_path / "hf")
    cfg = EvalConfig(tasks=[DROP_TASK], device="cpu", perplexity=False)
    fp32 = runner.evaluate_checkpoint(hf, cfg, tmp_path / "eval", name="base")["results"][0]
    bf16_cfg = cfg.model_copy(update={"dtype": "bfloat16"})
    bf16 = runner.evaluate_checkpoint(hf, bf16_cfg, tmp_path / "eval", name="base")["results"][0]
    assert (fp32["dtype"], bf16["dtype"]) == ("float32", "bfloat16")
    assert bf16["settings"] != fp32["settings"]  # a dtype change recomputes the row
    assert runner.resolve_dtype("auto", "cuda") == "bfloat16"
    assert runner.resolve_dtype("auto", "cpu") == "float32"
    assert runner.resolve_dtype("float32", "cuda") == "float32"
    assert torch.bfloat16 == getattr(torch, bf16["dtype"])
