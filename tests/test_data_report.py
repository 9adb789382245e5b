"""tinylab.data.report and `tinylab prepare`: tables and figures of prepared data, mixture
schedules of stages, and the command's exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import matplotlib
import pytest
from _data_fixtures import data_config, make_corpus

from tinylab.config.kinds import load_params
from tinylab.config.loader import PROJECT_ROOT
from tinylab.data import PackedData, prepare, report

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> PackedData:
    root = tmp_path_factory.mktemp("corpus")
    make_corpus(root)
    return prepare(data_config(root), root / "data", progress=False)


def test_token_table_matches_the_index(data: PackedData) -> None:
    table = report.token_table(data).set_index("source")
    assert list(table.index) == ["prose", "code"]
    code = data.index["sources"]["code"]["splits"]
    assert table.loc["code", "train_tokens"] == code["train"]["tokens"]
    assert table.loc["code", "documents"] == 120
    assert table.loc["code", "train_windows"] == data.num_windows("code")


def test_document_length_figure(data: PackedData) -> None:
    lengths = report.document_lengths(data)
    assert set(lengths["domain"]) == {"english", "code"} and (lengths["tokens"] > 2).all()
    fig = report.plot_document_lengths(data)
    assert fig.axes[0].get_xlabel() == "document length (tokens)"


def test_mixture_schedule_of_a_ramped_stage(params: Path) -> None:
    stage_file = params / "stages" / "ramped.yaml"
    stage_file.write_text(
        "extends: base.yaml\nname: ramped\nmixture: {prose: 0.5, code: 0.5}\n"
        "ramp: {tokens: 32768, start: {prose: 1.0}}\n"
    )
    stage = load_params(stage_file)
    frame = report.mixture_schedule(stage, {"prose": 10, "code": 10}, points=8)
    code = frame[frame["source"] == "code"].sort_values("tokens")
    assert code["expected"].iloc[0] < 0.1 and code["expected"].iloc[-1] == pytest.approx(0.5)
    assert (abs(code["realized"] - code["expected"]) < 0.1).all()
    fig = report.plot_mixture_schedules([stage, load_params(params / "stages" / "base.yaml")])
    assert [ax.get_title() for ax in fig.axes] == ["ramped", "base"]


def test_stages_using_the_demo_data() -> None:
    names = [stage.name for stage in report.stages_using("params/data/demo.yaml")]
    assert "base" in names
    assert report.stages_using(PROJECT_ROOT / "params" / "data" / "nonexistent.yaml") == []


def tinylab(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tinylab.cli", *args], capture_output=True, text=True, timeout=300
    )


@pytest.mark.slow  # three CLI processes, ~4 s each
def test_prepare_command(tmp_path: Path) -> None:
    make_corpus(tmp_path)
    (tmp_path / "params" / "data").mkdir(parents=True)
    yaml = tmp_path / "params" / "data" / "small.yaml"
    yaml.write_text(
        "tokenizer: {kind: train, vocab_size: 300}\n"
        f"sources: {{code: {{kind: local, domain: code, paths: ['{tmp_path}/code.jsonl'], "
        "text_field: content}}\nseq_len: 16\nnum_workers: 1\n"
    )
    out = tmp_path / "run" / "data"
    result = tinylab("prepare", str(yaml), "--out", str(out), "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "train_tokens" in result.stdout and (out / "index.json").is_file()
    bad = tinylab("prepare", str(yaml), "--out", str(out), "--set", "sources.code.text_field=x")
    assert bad.returncode == 2
    assert "text_field 'x' missing" in bad.stderr and "Traceback" not in bad.stderr
    bad = tinylab("prepare", str(yaml), "--out", str(out), "--set", "seq_len=-1")
    assert bad.returncode == 2 and "seq_len = -1" in bad.stderr


def test_mixture_schedules_of_no_stage_say_so() -> None:
    fig = report.plot_mixture_schedules([])
    assert "no stage" in fig.axes[0].texts[0].get_text()
