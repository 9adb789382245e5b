"""tinylab.analysis.compare: several runs side by side (differences from the first run, the
params that differ, wall time), and 06_compare rendered to one HTML file."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from _analysis_fixtures import CHILD, write_run, write_stage

from tinylab.analysis.compare import (
    CompareError,
    benchmark_table,
    bits_per_byte_table,
    default_out_dir,
    differences,
    load_comparison,
    params_diff,
    runs_table,
    stage_timing,
    write_comparison,
)
from tinylab.config.loader import PROJECT_ROOT
from tinylab.layout import RunLayout


def other_run(run_dir: Path) -> Path:
    """A run sharing base and continual-code with `write_run`'s: base at a lower learning rate
    (code bpb 2.5, arc_easy 0.45), continual-code as there; a manifest with --set overrides."""
    write_stage(run_dir, "base", {"optim": {"lr": 5e-3}}, 2.5, 0.45, (1000, 1000), 100)
    write_stage(run_dir, "continual-code", CHILD, 2.0, 0.40, (1000, 1000), 300)
    steps = {"base": {"params": {"run_dir": str(run_dir), "overrides": ["optim.lr=5e-3"]}}}
    RunLayout(run_dir).manifest.write_text(json.dumps({"pipeline": "p.yaml", "steps": steps}))
    return run_dir


def write_items(run_dir: Path, correct: int, code_windows: list[float]) -> None:
    """Per-item data of stage base: 20 arc_easy items (the first `correct` right), the code
    domain's held-out windows (as many as validation measured: 4) and 3 english windows (not the
    4 validation measured: another sample, no interval)."""
    items = [{"task": "arc_easy", "doc_id": i, "acc_norm": float(i < correct)} for i in range(20)]
    windows = [{"task": "perplexity/code", "window": f"code/{i}", "bits_per_byte": bpb}
               for i, bpb in enumerate(code_windows)]  # fmt: skip
    windows += [{"task": "perplexity/english", "window": f"english/{i}", "bits_per_byte": 2.0}
                for i in range(3)]  # fmt: skip
    lines = "".join(json.dumps(r) + "\n" for r in items + windows)
    RunLayout(run_dir).eval_samples("base").write_text(lines)


@pytest.fixture
def runs(tmp_path: Path) -> list[Path]:
    first, second = write_run(tmp_path / "a"), other_run(tmp_path / "b")
    write_items(first, 6, [2.9, 3.1, 2.8, 3.2])  # arc_easy 0.30, code bpb 3.0
    write_items(second, 9, [2.0, 3.0, 2.3, 2.7])  # arc_easy 0.45, code bpb 2.5
    return [first, second]


def test_params_diff_lists_only_the_keys_that_differ(runs: list[Path]) -> None:
    diff = params_diff(load_comparison(runs))
    assert diff.loc["base.stage_params.optim.lr"].tolist() == ["0.01", "0.005"]
    assert diff.loc["base.overrides"].tolist() == ["(absent)", '["optim.lr=5e-3"]']
    assert diff.loc["pipeline"].tolist() == ["null", "p.yaml"]
    # stages only a has: one row each at the shallowest absent key, not one per leaf
    assert diff.loc["continual-code-lora"].iloc[1] == "(absent)"
    assert not any(key.startswith("continual-code-lora.") for key in diff.index)
    same = {"base.stage_params.optim.min_lr", "base.stage_params.model.hidden_size"}
    assert not same & set(diff.index)  # nested keys that agree are left out
    assert not any(key.startswith("continual-code.") for key in diff.index)
    assert list(diff.columns) == ["a", "b"]


def test_benchmark_and_bits_per_byte_differences_from_the_baseline(runs: list[Path]) -> None:
    comparison = load_comparison(runs)
    scores = benchmark_table(comparison)
    assert list(scores.columns) == ["a", "b", "b - a", "b - a: 95% interval", "b - a: verdict"]
    assert scores.index.tolist() == [("base", "arc_easy"), ("continual-code", "arc_easy")]
    assert scores.loc[("base", "arc_easy")].iloc[:3].tolist() == pytest.approx([0.30, 0.45, 0.15])
    # 3 of 20 items gained: a resample holds none of them 3.9% of the time, so the interval's
    # low end is 0 and the difference is within noise
    assert scores.loc[("base", "arc_easy"), "b - a: 95% interval"] == "[+0, +0.3]"
    assert scores.loc[("base", "arc_easy"), "b - a: verdict"] == "within noise"
    assert scores.loc[("continual-code", "arc_easy"), "b - a"] == 0
    assert scores.loc[("continual-code", "arc_easy"), "b - a: verdict"] == "no per-item data"
    bpb = bits_per_byte_table(comparison)
    assert bpb.loc[("base", "code")].iloc[:3].tolist() == pytest.approx([3.0, 2.5, -0.5])
    assert bpb.loc[("base", "code"), "b - a: verdict"] == "beyond noise"  # every window gained
    assert bpb.loc[("base", "english"), "b - a"] == 0
    assert bpb.loc[("base", "english"), "b - a: verdict"] == "no per-item data"  # 3 of 4 windows
    assert {stage for stage, _ in bpb.index} == {"base", "continual-code"}  # stages both have


def test_the_interval_is_paired_and_centred_on_the_difference(runs: list[Path]) -> None:
    rows = differences(load_comparison(runs)).set_index(["stage", "measure"])
    code = rows.loc[("base", "code bpb")]
    assert (code["difference"], code["items"]) == (pytest.approx(-0.5), 4)
    assert -0.9 <= code["low"] < -0.5 < code["high"] <= -0.1  # window differences -0.9 .. -0.1
    task = rows.loc[("base", "arc_easy")]
    assert (task["low"], task["high"], task["items"]) == (0.0, pytest.approx(0.3), 20)


def test_stage_timing_per_stage_and_run(runs: list[Path]) -> None:
    timing = stage_timing(load_comparison(runs))
    assert timing.loc[("base", "b"), "wall_s"] == pytest.approx(12.34)
    assert timing.loc[("base", "a"), "tokens_per_s"] == 2000.0  # median of 1000, 2000, 3000
    assert timing.loc[("all stages", "b"), "tokens"] == 600
    assert timing.index[-1][0] == "all stages"


def test_runs_table_names_sweep_values_and_shared_steps(runs: list[Path]) -> None:
    manifest = RunLayout(runs[1]).manifest
    record = json.loads(manifest.read_text())
    record["sweep"] = {"values": {"base.optim.lr": "5e-3"}}
    record["steps"]["prepare"] = {"params": {}, "shared_from": {"run": "a"}}
    manifest.write_text(json.dumps(record))
    table = runs_table(load_comparison(runs))
    assert table.loc["b", "sweep values"] == "base.optim.lr=5e-3"
    assert table.loc["b", "steps shared from"] == "prepare: a"
    assert table.loc["a", "sweep values"] == ""
    assert "git commit" not in table  # no run records one: the column is left out


def test_runs_are_named_by_folder_and_parent_where_names_repeat(tmp_path: Path) -> None:
    first, second = write_run(tmp_path / "x" / "run"), write_run(tmp_path / "y" / "run")
    assert list(load_comparison([first, second]).runs) == ["x/run", "y/run"]
    assert default_out_dir([first, second]) == PROJECT_ROOT / "outputs/compare/x_run-vs-y_run"


def test_bad_runs_are_refused_with_one_message(tmp_path: Path, runs: list[Path]) -> None:
    with pytest.raises(CompareError, match="give at least 2 run folders"):
        load_comparison(runs[:1])
    with pytest.raises(CompareError, match=f"{tmp_path / 'empty'}: not a run folder; expected"):
        load_comparison([runs[0], tmp_path / "empty"])
    with pytest.raises(CompareError, match="given twice"):
        load_comparison([runs[0], runs[0]])
    lone = tmp_path / "lone"
    write_stage(lone, "other", {}, 1.0, 0.5, (1, 1), 1)
    with pytest.raises(CompareError, match="no stage in common"):
        load_comparison([runs[0], lone])


@pytest.mark.slow
def test_write_comparison_renders_figures_and_tables(tmp_path: Path, runs: list[Path]) -> None:
    html_path = write_comparison(runs, tmp_path / "out")
    assert html_path == tmp_path / "out" / "compare.html"
    html = html_path.read_text()
    for png in sorted((tmp_path / "out" / "figures").glob("*.png")):  # each embedded as drawn
        assert f"data:image/png;base64,{base64.b64encode(png.read_bytes()).decode()}" in html
    assert {p.stem for p in (tmp_path / "out" / "figures").glob("*.png")} == {
        "loss",
        "bits_per_byte",
    }
    shown_texts = ("b - a", "arc_easy", "base.stage_params.optim.lr", "all stages", "0.005")
    for shown in (*shown_texts, "within noise", "beyond noise", "95% interval"):
        assert shown in html, shown
    assert "from tinylab" not in html  # code hidden
