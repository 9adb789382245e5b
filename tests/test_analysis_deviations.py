"""tinylab.analysis.deviations: a resolved run against the paper's facts (params/paper/)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from _analysis_fixtures import write_run

from tinylab.analysis.deviations import (
    NOT_IN_PAPER,
    PAPER_FACTS,
    DeviationsError,
    RunSettings,
    assumptions,
    deviation_table,
    pipeline_settings,
    run_settings,
    same,
    show,
)
from tinylab.analysis.runs import load_run
from tinylab.config.eval import EvalConfig
from tinylab.config.kinds import load_params
from tinylab.config.loader import PARAMS_DIR, dump_config
from tinylab.config.pipeline import DeviationReason
from tinylab.layout import RunLayout

PAPER_PIPELINE = PARAMS_DIR / "pipelines" / "tinyllama-v1.1.yaml"
PAPER_STAGES = PARAMS_DIR / "stages" / "tinyllama-v1.1"


def _paper_stage(name: str, *overrides: str):
    return load_params(PAPER_STAGES / f"{name}.yaml", overrides=overrides)


def _tinylab(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "tinylab.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def _rows(settings: RunSettings) -> dict[tuple[str, str], dict]:
    return {(r["where"], r["fact"]): r for r in deviation_table(settings).to_dict("records")}


def test_the_paper_stages_match_the_papers_training_facts() -> None:
    """Only what the hardware decides differs: the attention kernel and the sharding."""
    settings = pipeline_settings(PAPER_PIPELINE)
    table = deviation_table(settings)
    training = table[~table["fact"].str.contains(":") & (table["fact"] != "stage")]
    assert set(training["fact"]) == {"model.attention", "parallelism"}
    assert set(training["where"]) == {"all stages"}


def test_one_changed_paper_fact_appears_with_its_values_and_status() -> None:
    settings = RunSettings(stages={"base": _paper_stage("base", "optim.lr=1e-3")}, nproc={})
    row = _rows(settings)[("base", "optim.lr")]
    assert (row["paper"], row["this run"], row["status"]) == ("0.0004", "0.001", "assumed")
    assert row["why"] == "(no reason given)"
    assert "docs/PAPER.md, 'Training hyperparameters'" in row["source"]


def test_the_old_v1_0_batch_is_a_deviation_from_the_v1_1_facts() -> None:
    stage = _paper_stage("cooldown-mathcode", "global_batch_tokens=8388608")
    row = _rows(RunSettings(stages={"cooldown-mathcode": stage}))[
        ("cooldown-mathcode", "global_batch_tokens")
    ]
    assert (row["paper"], row["this run"], row["status"]) == ("7,340,032", "8,388,608", "assumed")


def test_the_lora_stages_are_not_in_the_paper() -> None:
    rows = _rows(pipeline_settings(PAPER_PIPELINE))
    for name in ("continual-mathcode-lora", "cooldown-mathcode-lora"):
        row = rows[(name, "stage")]
        assert row["paper"] == NOT_IN_PAPER and row["status"] == ""
        assert row["why"].startswith("choice: issue 9")
    assert (
        "lora adapter r=16 alpha=32 from base"
        in rows[("continual-mathcode-lora", "stage")]["this run"]
    )


@pytest.mark.parametrize("pipeline", sorted((PARAMS_DIR / "pipelines").glob("*.yaml")))
def test_every_deviation_of_a_shipped_pipeline_says_why(pipeline: Path) -> None:
    table = deviation_table(pipeline_settings(pipeline))
    assert not table.empty
    assert "(no reason given)" not in set(table["why"]), table[table["why"] == "(no reason given)"]


def test_the_demo_deviates_by_scale_and_keeps_the_papers_mixtures() -> None:
    rows = _rows(pipeline_settings(PARAMS_DIR / "pipelines" / "demo.yaml"))
    assert rows[("all stages", "model.hidden_size")]["this run"] == "128"
    assert rows[("all stages", "model.hidden_size")]["why"].startswith("scale-down: ")
    assert rows[("all stages", "parallel.precision")]["why"] == "hardware: fp32 on CPU"
    assert not any(fact == "mixture" for _, fact in rows)  # 75/15/10 and 50/50, as the paper
    assert rows[("pipeline", "stages")]["paper"] == "continual-general, cooldown-general"


def test_the_longest_reason_name_wins() -> None:
    stage = _paper_stage("base", "optim.lr=1e-3", "optim.min_lr=1e-4")
    reasons = {
        "optim": DeviationReason(kind="choice", note="all of AdamW"),
        "optim.lr": DeviationReason(kind="hardware", note="just the peak"),
    }
    rows = _rows(RunSettings(stages={"base": stage}, reasons=reasons))
    assert rows[("base", "optim.lr")]["why"] == "hardware: just the peak"
    assert rows[("base", "optim.min_lr")]["why"] == "choice: all of AdamW"


def test_a_reason_for_no_fact_is_a_user_error() -> None:
    reasons = {"optim.learning_rate": DeviationReason(kind="choice", note="x")}
    settings = RunSettings(stages={}, reasons=reasons, where="params/pipelines/p.yaml")
    with pytest.raises(DeviationsError, match=r"params/pipelines/p.yaml: deviations.optim.lea"):
        deviation_table(settings)


def test_a_run_folder_gives_its_resolved_stages_processes_and_recorded_protocol(
    tmp_path: Path,
) -> None:
    run = RunLayout(write_run(tmp_path / "run"))
    stage_yaml = run.stage("base").resolved.read_text()
    protocol = EvalConfig(tasks=[{"name": "arc_easy", "metric": "acc_norm"}], device="cuda")
    run.manifest.write_text(json.dumps({"steps": {
        "base": {"params": {"stage_params": "x.yaml", "nproc": 4},
                 "resolved": {"stage_params": stage_yaml}},
        "eval-base": {"params": {"stage": "base", "eval_params": "e.yaml"},
                      "resolved": {"eval_params": dump_config(protocol)}},
    }}))  # fmt: skip
    row = {
        "task": "arc_easy",
        "metric": "acc_norm",
        "value": 0.3,
        "stderr": 0.01,
        "n": 9,
        "shots": 0,
        "harness": "lm_eval 0.4.13",
        "bos_prepended": False,
        "dtype": "float32",
    }
    run.eval_json("base").write_text(json.dumps({"checkpoint": "base", "results": [row]}))
    settings = run_settings(load_run(run.root))
    assert settings.nproc == {"base": 4} and settings.evals["base"] == protocol
    rows = _rows(settings)
    assert rows[("base", "parallelism")]["this run"] == "FSDP2 over 4 processes"
    assert rows[("continual-code-lora", "stage")]["paper"] == NOT_IN_PAPER
    assert ("arc_easy", "commonsense: dtype") not in rows  # recorded fp32, not the GPU's bf16
    assert rows[("arc_easy", "commonsense: harness")]["this run"] == "lm_eval 0.4.13"
    assert "arc_easy" not in rows[("commonsense", "tasks")]["paper"]
    row["dtype"] = "bfloat16"
    run.eval_json("base").write_text(json.dumps({"checkpoint": "base", "results": [row]}))
    recorded = _rows(run_settings(load_run(run.root)))[("arc_easy", "commonsense: dtype")]
    assert (recorded["paper"], recorded["this run"]) == ("float32", "bfloat16")


def test_eval_params_that_no_longer_validate_name_the_step(tmp_path: Path) -> None:
    run = RunLayout(write_run(tmp_path / "run"))
    stale = "humaneval: {protocol: instructeval, stop: [x]}\n"  # a schema that has moved on
    run.manifest.write_text(json.dumps({"steps": {"eval-base": {
        "params": {"stage": "base", "eval_params": "params/eval/old.yaml"},
        "resolved": {"eval_params": stale},
    }}}))  # fmt: skip
    with pytest.raises(DeviationsError, match=r"evaluated 'base' \(params/eval/old.yaml\) no l"):
        run_settings(load_run(run.root))


def test_the_cli_prints_the_paper_pipelines_deviations_without_training() -> None:
    result = _tinylab("deviations", str(PAPER_PIPELINE))
    assert result.returncode == 0, result.stderr
    assert "continual-mathcode-lora: stage\n    paper: not in the paper" in result.stdout
    assert "all stages: parallelism (stated)\n    paper: HSDP" in result.stdout


def test_the_cli_names_a_bad_reason_in_one_line(tmp_path: Path) -> None:
    pipeline = yaml.safe_load(PAPER_PIPELINE.read_text())
    pipeline["deviations"] = {"optim.learnig_rate": {"kind": "choice", "note": "typo"}}
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(pipeline))
    result = _tinylab("deviations", str(path))
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "deviations.optim.learnig_rate: no such fact" in result.stderr


def test_assumptions_list_the_three_the_issue_names() -> None:
    table = assumptions(PAPER_FACTS)
    facts = set(table["fact"])
    assert {"schedule.decay_tokens", "exclude.english", "dataset.math"} <= facts
    batch = [fact for fact in table["fact"] if fact.startswith("global_batch_tokens (")]
    assert batch == ["global_batch_tokens (base, continual-general, continual-mathcode, "
                     "continual-chinese)", "global_batch_tokens (cooldown-general, "
                     "cooldown-mathcode, cooldown-chinese)"]  # fmt: skip
    assert "model.hidden_size" not in facts and "eval.chinese.protocol" in facts
    assert table["why"].str.len().min() > 20


def test_values_compare_as_numbers_and_show_readably() -> None:
    assert same(1.5e12, 1_500_000_000_000) and same([0.9, 0.95], (0.9, 0.95))
    assert not same(True, 1) and not same({"english": 100}, {"english": 100, "code": 0})
    assert same(None, None) and not same(None, 0)
    assert show(1.5e12) == "1,500,000,000,000" and show(4e-4) == "0.0004" and show(False) == "false"
    assert show(4096) == "4,096" and show(256) == "256"  # counts: thousands separators
    assert show({"english": 75.0, "code": 15.0}) == "english 75, code 15"
