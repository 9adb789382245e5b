"""tinylab.evaluate.harness: lm-eval on tinylab's model object, through the hub tasks' own YAML on
local files, and the same numbers as the `lm_eval` command line on the exported folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from _cli import tinylab
from _evaluate_fixtures import ARC_ITEMS, TINY_MODEL, arc_task, tiny_hf_dir, tiny_tokenizer
from tokenizers import processors
from typer.testing import CliRunner

from tinylab.cli import app
from tinylab.config.eval import EvalConfig, EvalTask
from tinylab.config.loader import ConfigError
from tinylab.evaluate import evaluate_checkpoint, harness
from tinylab.evaluate.runner import bos_prepended
from tinylab.model import build_model, load_hf, save_hf

TASK = EvalTask(name="local_arc_easy", metric="acc_norm", chance=0.25)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("harness")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    return tiny_hf_dir(root / "hf"), arc_task(root / "tasks")


def _cfg(tasks_dir: Path, **kw) -> EvalConfig:
    return EvalConfig(tasks=[TASK], include_path=str(tasks_dir), batch_size=8, device="cpu", **kw)


def test_a_hub_format_task_runs_through_lm_eval(setup: tuple[Path, Path]) -> None:
    hf_dir, tasks_dir = setup
    from transformers import AutoTokenizer

    lm = harness.make_lm(load_hf(hf_dir), AutoTokenizer.from_pretrained(hf_dir), batch_size=8)
    manager = harness.task_manager([tasks_dir], [TASK.name])
    (row,), samples = harness.run_tasks(lm, [TASK], manager=manager)
    assert row["task"] == TASK.name and row["n"] == len(ARC_ITEMS) and row["shots"] == 0
    assert set(row["metrics"]) == {"acc", "acc_norm"}
    records = samples[TASK.name]
    assert [r["doc_id"] for r in records] == list(range(len(ARC_ITEMS)))
    assert all(r["num_choices"] == 4 for r in records)
    assert row["value"] == pytest.approx(sum(r["acc_norm"] for r in records) / len(records))


def test_bos_is_off_by_default_and_recorded(setup: tuple[Path, Path]) -> None:
    hf_dir, tasks_dir = setup
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(hf_dir)
    model = load_hf(hf_dir)
    assert harness.make_lm(model, tok).tok_encode("Question")[0] != tok.bos_token_id
    assert harness.make_lm(model, tok, add_bos_token=True).tok_encode("Q")[0] == tok.bos_token_id
    assert EvalConfig().add_bos_token is False
    assert bos_prepended(tok, False) is False and bos_prepended(tok, True) is True


def _hf_dir_without_bos(folder: Path) -> Path:
    """A tiny model folder whose tokenizer adds no BOS by itself (no template)."""
    tok = tiny_tokenizer()
    tok._tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    return save_hf(build_model(TINY_MODEL, seed=0), folder, tokenizer=tok)


def test_bos_on_means_bos_on_for_a_tokenizer_that_adds_none(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    hf_dir = _hf_dir_without_bos(tmp_path / "hf")
    tok = AutoTokenizer.from_pretrained(hf_dir)
    assert tok("Question").input_ids[0] != tok.bos_token_id
    lm = harness.make_lm(load_hf(hf_dir), tok, add_bos_token=True)
    assert lm.tok_encode("Question")[0] == tok.bos_token_id
    assert lm.tok_encode("Question")[1:] == tok("Question").input_ids
    assert bos_prepended(lm.tokenizer, True) is True
    assert tok("Question").input_ids[0] != tok.bos_token_id  # the caller's tokenizer untouched
    off = harness.make_lm(load_hf(hf_dir), tok, add_bos_token=False)
    assert off.tok_encode("Question") == tok("Question").input_ids


def test_bos_on_without_a_bos_token_is_a_clear_error(setup: tuple[Path, Path]) -> None:
    from transformers import AutoTokenizer

    hf_dir, _ = setup
    tok = AutoTokenizer.from_pretrained(hf_dir)
    tok.bos_token = None
    with pytest.raises(ConfigError, match="cannot prepend BOS"):
        harness.make_lm(load_hf(hf_dir), tok, add_bos_token=True)


def _cli_samples(out: Path, task: str) -> list[dict]:
    path = next(out.rglob(f"samples_{task}_*.jsonl"))
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_bos_on_equals_the_lm_eval_command_line(tmp_path: Path) -> None:
    """Per-sample log-likelihoods with BOS on equal the CLI's for a tokenizer that adds no BOS
    by itself (the CLI hands add_bos_token to from_pretrained), and differ from BOS off."""
    hf_dir = _hf_dir_without_bos(tmp_path / "hf")
    tasks_dir = arc_task(tmp_path / "tasks")
    runs = {}
    for bos in (True, False):
        cfg = _cfg(tasks_dir, add_bos_token=bos)
        evaluate_checkpoint(hf_dir, cfg, tmp_path / "ours", name=f"bos-{bos}")
        lines = (tmp_path / "ours" / f"bos-{bos}.samples.jsonl").read_text().splitlines()
        runs[bos] = {r["doc_id"]: r["filtered_resps"] for r in map(json.loads, lines)}
    command = [
        sys.executable, "-m", "lm_eval", "run", "--model", "hf",
        "--model_args", f"pretrained={hf_dir},add_bos_token=True,dtype=float32",
        "--device", "cpu", "--batch_size", "8", "--tasks", TASK.name, "--log_samples",
        "--include_path", str(tasks_dir), "--output_path", str(tmp_path / "cli"),
    ]  # fmt: skip
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1"}
    subprocess.run(command, check=True, capture_output=True, env=env, cwd=tmp_path)
    cli = {s["doc_id"]: s["filtered_resps"] for s in _cli_samples(tmp_path / "cli", TASK.name)}
    assert set(cli) == set(runs[True]) and len(cli) == len(ARC_ITEMS)
    for doc_id, resps in cli.items():
        ours = runs[True][doc_id]
        assert [float(r[0]) for r in ours] == pytest.approx([float(r[0]) for r in resps], abs=1e-5)
    assert runs[True] != runs[False]  # BOS matters for this model, so the test can fail


def test_an_unreported_metric_is_a_clear_error(setup: tuple[Path, Path], tmp_path) -> None:
    hf_dir, tasks_dir = setup
    wrong_metric = _cfg(tasks_dir).model_copy(
        update={"tasks": [EvalTask(name=TASK.name, metric="bleu")]}
    )
    with pytest.raises(ConfigError, match="bleu"):
        evaluate_checkpoint(hf_dir, wrong_metric, tmp_path, name="x")


@pytest.mark.slow
def test_an_unknown_task_is_a_clear_error(setup: tuple[Path, Path], tmp_path) -> None:
    hf_dir, tasks_dir = setup
    bad = _cfg(tasks_dir).model_copy(update={"tasks": [EvalTask(name="no_such_task_xyz")]})
    with pytest.raises(ConfigError, match="no_such_task_xyz"):
        evaluate_checkpoint(hf_dir, bad, tmp_path, name="x")


@pytest.mark.slow
def test_numbers_equal_the_lm_eval_command_line(setup: tuple[Path, Path], tmp_path: Path) -> None:
    hf_dir, tasks_dir = setup
    ours = evaluate_checkpoint(hf_dir, _cfg(tasks_dir), tmp_path / "ours", name="tiny")
    command = [
        sys.executable, "-m", "lm_eval", "run", "--model", "hf",
        "--model_args", f"pretrained={hf_dir},add_bos_token=False,dtype=float32",
        "--device", "cpu", "--batch_size", "8", "--tasks", TASK.name,
        "--include_path", str(tasks_dir), "--output_path", str(tmp_path / "cli"),
    ]  # fmt: skip
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1"}
    subprocess.run(command, check=True, capture_output=True, env=env, cwd=tmp_path)
    cli = json.loads(next((tmp_path / "cli").rglob("results_*.json")).read_text())
    theirs = cli["results"][TASK.name]
    row = ours["results"][0]
    for metric in ("acc", "acc_norm"):
        assert row["metrics"][metric] == theirs[f"{metric},none"]
    assert row["stderr"] == pytest.approx(theirs["acc_norm_stderr,none"])
    assert row["n"] == cli["n-samples"][TASK.name]["effective"]


def test_tinylab_eval_command(
    setup: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    hf_dir, tasks_dir = setup
    params = tmp_path / "eval.yaml"
    params.write_text(
        f"tasks: [{{name: {TASK.name}, metric: acc_norm, chance: 0.25}}]\n"
        f"include_path: {tasks_dir}\nbatch_size: 8\ndevice: cpu\n"
    )
    args = ["eval", str(hf_dir), "--params", str(params), "--out", str(tmp_path / "out")]
    result = CliRunner().invoke(app, [*args, "--name", "base"])
    assert result.exit_code == 0, result.output
    assert TASK.name in result.output
    stored = json.loads((tmp_path / "out" / "base.json").read_text())
    assert stored["results"][0]["add_bos_token"] is False
    capsys.readouterr()
    bad = tinylab(monkeypatch, "eval", str(tmp_path), "--params", str(params), "--out", "x")
    assert bad == 2 and "config.json" in capsys.readouterr().err


def test_eval_on_missing_or_truncated_weights_is_one_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    params = tmp_path / "eval.yaml"
    params.write_text("perplexity: false\ndevice: cpu\nhumaneval: {limit: 1, max_new_tokens: 2}\n")
    no_weights = tiny_hf_dir(tmp_path / "no_weights")
    (no_weights / "model.safetensors").unlink()
    truncated = tiny_hf_dir(tmp_path / "truncated")
    weights = truncated / "model.safetensors"
    os.truncate(weights, weights.stat().st_size // 2)
    garbage = tiny_hf_dir(tmp_path / "garbage")
    (garbage / "model.safetensors").write_bytes(b"\xff" * 64)
    cases = {
        no_weights: f"{no_weights}: no *.safetensors weights",
        truncated: f"{weights}: unreadable safetensors",
        garbage: f"{garbage / 'model.safetensors'}: unreadable safetensors",
    }
    for hf_dir, message in cases.items():
        out = tmp_path / f"out-{hf_dir.name}"
        capsys.readouterr()
        code = tinylab(monkeypatch, "eval", str(hf_dir), "--params", str(params), "--out", str(out))
        captured = capsys.readouterr()
        lines = captured.err.strip().splitlines()
        assert code == 2 and len(lines) == 1, captured
        assert message in lines[0] and "tinylab train" in lines[0]
        assert "Traceback" not in captured.err + captured.out and not out.exists()
