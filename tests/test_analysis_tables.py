"""tinylab.analysis.tables: the report's tables of a run, on a small synthetic run folder."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pandas as pd
import pytest
from _analysis_fixtures import STAGES, write_lineage_run, write_run

from tinylab.analysis import tables
from tinylab.analysis.runs import load_run
from tinylab.layout import RunLayout


@pytest.fixture
def run(tmp_path: Path):
    layout = RunLayout(write_run(tmp_path))
    manifest = {
        "run_id": "demo",
        "git": {"sha": "abc123", "dirty": True},
        "hardware": {"cpu": "test"},
        "packages": {"torch": "2.0", "missing": None},
        "steps": {"base": {"status": "done", "seconds": 1.5}},
    }
    layout.manifest.write_text(json.dumps(manifest))
    return load_run(layout.root)


def test_benchmark_scores_are_one_column_per_stage(run) -> None:
    scored = dataclasses.replace(run, evals=run.evals.assign(chance=0.25))
    table = tables.benchmark_scores(scored)
    assert table[["task", "metric", "chance"]].values.tolist() == [["arc_easy", "acc_norm", 0.25]]
    assert {stage: table[stage].item() for stage in STAGES} == {
        name: spec[2] for name, spec in STAGES.items()
    }


def test_benchmark_scores_say_which_protocol_and_dtype_made_each_number(run) -> None:
    rows = [
        {"stage": "base", "task": "mmlu", "metric": "acc", "value": 0.3, "chance": 0.25,
         "protocol": "instructeval", "dtype": "float32"},
        {"stage": "base", "task": "bbh", "metric": "acc", "value": 0.2, "chance": None,
         "protocol": "instructeval", "dtype": "float32"},
        {"stage": "base", "task": "hellaswag", "metric": "acc_norm", "value": 0.4, "chance": 0.25,
         "protocol": "lm_eval", "dtype": "bfloat16"},
    ]  # fmt: skip
    table = tables.benchmark_scores(dataclasses.replace(run, evals=pd.DataFrame(rows)))
    assert table[["task", "protocol", "dtype", "base"]].values.tolist() == [
        ["mmlu", "instructeval", "float32", 0.3],
        ["bbh", "instructeval", "float32", 0.2],  # no chance level, still a row
        ["hellaswag", "lm_eval", "bfloat16", 0.4],
    ]
    older = tables.benchmark_scores(run)  # results written before protocols were recorded
    assert older[["protocol", "dtype"]].values.tolist() == [["not recorded", "not recorded"]]


def test_provenance_and_steps_come_from_the_manifest(run) -> None:
    provenance = tables.provenance_table(run)["value"]
    assert provenance["run"] == "demo"
    assert provenance["git commit"] == "abc123 (uncommitted changes)"
    assert provenance["hardware: cpu"] == "test" and "missing" not in provenance
    assert tables.steps_table(run).to_dict("records") == [
        {"step": "base", "status": "done", "seconds": 1.5}
    ]


def test_the_report_step_running_while_it_reads_the_manifest_is_this_report(run) -> None:
    steps = {"base": {"status": "running"}, "report": {"status": "running"}}
    pipeline = {"steps": [{"name": "base", "notebook": "02_train_stage"},
                          {"name": "report", "notebook": "04_report"}]}  # fmt: skip
    manifest = {"steps": steps, "pipeline_resolved": pipeline}
    table = tables.steps_table(dataclasses.replace(run, manifest=manifest))
    assert table["status"].tolist() == ["running", "this report"]  # another step: as it is
    steps["report"] = {"status": "failed"}  # an earlier report step, read by `tinylab report`
    table = tables.steps_table(dataclasses.replace(run, manifest=manifest))
    assert table["status"].tolist() == ["running", "failed"]


def test_a_run_without_data_has_an_empty_data_table(run) -> None:
    assert tables.data_table(run).empty


def test_contributions_say_in_words_whether_a_change_is_within_noise(tmp_path: Path) -> None:
    table = tables.contributions_table(load_run(write_lineage_run(tmp_path)))
    table = table[table["stage"] == "continual"].set_index("measure")
    assert table.loc["arc_easy", "verdict"] == "beyond noise"  # 5 of 100 items gained
    assert table.loc["boolq", "verdict"] == "within noise"  # items swing, the mean does not
    assert table.loc["english bpb", "verdict"] == "no per-item data"
    assert table.loc["arc_easy", "95% low"] < table.loc["arc_easy", "change"]
    assert table.loc["code bpb", "items"] == 4
