"""tinylab.evaluate.humaneval: the real 164 problems, pass@k, generation and sandboxed scoring."""

from __future__ import annotations

import math

import pytest
from _evaluate_fixtures import TINY_MODEL, tiny_tokenizer

from tinylab.config.eval import HumanEvalConfig
from tinylab.config.loader import ConfigError
from tinylab.evaluate.humaneval import (
    NUM_PROBLEMS,
    evaluate_humaneval,
    execute,
    generate,
    load_problems,
    pass_at_k,
    program_for,
    score,
    truncate_at_stop,
)
from tinylab.model import build_model


def test_the_data_holds_all_164_problems() -> None:
    problems = load_problems()
    assert len(problems) == NUM_PROBLEMS
    assert problems[0]["task_id"] == "HumanEval/0" and problems[-1]["task_id"] == "HumanEval/163"
    assert set(problems[0]) >= {"prompt", "canonical_solution", "test", "entry_point"}
    assert len(load_problems(limit=5)) == 5


@pytest.mark.slow
def test_canonical_solutions_pass_164_of_164() -> None:
    problems = load_problems()
    cfg = HumanEvalConfig(timeout_s=10.0)
    runs = execute(problems, [[p["canonical_solution"]] for p in problems], cfg)
    failed = [
        p["task_id"] for p, r in zip(problems, runs, strict=True) if r[0]["status"] != "passed"
    ]
    assert failed == []
    assert score(runs, [1])["pass@1"]["value"] == 1.0


def test_a_wrong_completion_fails_in_the_sandbox() -> None:
    problem = load_problems(limit=1)[0]
    runs = execute(
        [problem], [["    return True\n", problem["canonical_solution"]]], HumanEvalConfig()
    )
    assert [r["status"] for r in runs[0]] == ["failed", "passed"]
    assert "check(has_close_elements)" in program_for(problem, "    pass\n")


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [
        (1, 1, 1, 1.0),
        (1, 0, 1, 0.0),
        (10, 3, 1, 0.3),  # pass@1 = c / n
        (10, 0, 5, 0.0),
        (10, 6, 5, 1.0),  # n - c < k: every 5-subset holds a correct sample
        (5, 2, 2, 1 - 3 / 10),  # 1 - C(3,2)/C(5,2)
        (20, 5, 10, 1 - math.comb(15, 10) / math.comb(20, 10)),
        (200, 13, 100, 1 - math.comb(187, 100) / math.comb(200, 100)),
    ],
)
def test_pass_at_k_matches_hand_values(n: int, c: int, k: int, expected: float) -> None:
    assert pass_at_k(n, c, k) == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_pass_at_k_needs_k_samples() -> None:
    with pytest.raises(ValueError, match="at least 5 samples"):
        pass_at_k(3, 1, 5)


def test_score_averages_problems_with_a_standard_error() -> None:
    runs = [[{"status": "passed"}, {"status": "failed"}], [{"status": "timeout"}] * 2]
    scores = score(runs, [1, 2])
    assert scores["pass@1"]["value"] == pytest.approx(0.25)
    assert scores["pass@2"]["value"] == pytest.approx(0.5)
    assert scores["pass@1"]["stderr"] == pytest.approx(0.25)  # std([0.5, 0]) / sqrt(2)


def test_completions_stop_at_the_first_stop_sequence() -> None:
    stop = HumanEvalConfig().stop
    text = "    return x\n\ndef other():\n    pass\n"
    assert truncate_at_stop(text, stop) == "    return x\n"
    assert truncate_at_stop("    return 1\nprint(2)", stop) == "    return 1"
    assert truncate_at_stop("    return 1", stop) == "    return 1"


def test_greedy_generation_is_deterministic_and_sampling_is_seeded() -> None:
    model, tok = build_model(TINY_MODEL, seed=0).eval(), tiny_tokenizer()
    prompts = ["def add(a, b):\n", "def f():\n    return"]
    greedy = HumanEvalConfig(max_new_tokens=8, batch_size=2)
    assert generate(model, tok, prompts, greedy) == generate(model, tok, prompts, greedy)
    sampled = HumanEvalConfig(max_new_tokens=8, temperature=1.0, top_p=0.9)
    assert generate(model, tok, prompts, sampled, seed=1) == generate(
        model, tok, prompts, sampled, seed=1
    )


def test_evaluate_humaneval_end_to_end_on_a_random_model() -> None:
    model, tok = build_model(TINY_MODEL, seed=0).eval(), tiny_tokenizer()
    cfg = HumanEvalConfig(limit=2, num_samples=2, ks=[1, 2], max_new_tokens=6, temperature=0.8)
    scores, records = evaluate_humaneval(model, tok, cfg)
    assert set(scores) == {"pass@1", "pass@2"} and scores["pass@1"]["n"] == 2
    assert scores["pass@1"]["value"] == 0.0  # a random model writes no working code
    assert [r["task_id"] for r in records] == ["HumanEval/0", "HumanEval/1"]
    assert all(len(r["completions"]) == 2 for r in records)


def test_ks_beyond_the_samples_are_rejected() -> None:
    model, tok = build_model(TINY_MODEL, seed=0).eval(), tiny_tokenizer()
    with pytest.raises(ConfigError, match="num_samples"):
        evaluate_humaneval(model, tok, HumanEvalConfig(limit=1, ks=[1, 10]))


def test_long_prompts_are_cut_from_the_left_to_fit_the_context() -> None:
    model, tok = build_model(TINY_MODEL, seed=0).eval(), tiny_tokenizer()
    long_prompt = "# filler line\n" * 200 + "def add(a, b):\n"
    assert len(tok(long_prompt).input_ids) > TINY_MODEL.max_position_embeddings
    (completion,) = generate(model, tok, [long_prompt], HumanEvalConfig(max_new_tokens=4))
    assert isinstance(completion, str)
    too_long = HumanEvalConfig(max_new_tokens=TINY_MODEL.max_position_embeddings)
    with pytest.raises(ConfigError, match="no room for the prompt"):
        generate(model, tok, ["def f():"], too_long)
