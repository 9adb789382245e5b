"""tinylab.evaluate results on disk: the JSON/JSONL layout, no recomputation of what is stored for
the same checkpoint and settings, and the table and figure the notebook shows."""

from __future__ import annotations

import json
import os
from pathlib import Path

import matplotlib
import pytest
from _evaluate_fixtures import ARC_ITEMS, arc_task, tiny_hf_dir

from tinylab.config.eval import EvalConfig, EvalTask
from tinylab.errors import UserError
from tinylab.evaluate import EvalError, harness, model_identity, plot_scores, runner, scores_table
from tinylab.evaluate.results import ResultStore, load_results
from tinylab.layout import RunLayout

matplotlib.use("Agg")
ARC = EvalTask(name="local_arc_easy", metric="acc_norm", chance=0.25)
ARC2 = EvalTask(name="local_arc_2", metric="acc")


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    tasks = arc_task(tmp_path / "tasks")
    arc_task(tasks, name="local_arc_2")
    calls: list[list[str]] = []
    real = harness.run_tasks

    def counting(lm, tasks, **kw):
        calls.append([t.name for t in tasks])
        return real(lm, tasks, **kw)

    monkeypatch.setattr(harness, "run_tasks", counting)
    cfg = EvalConfig(tasks=[ARC], include_path=str(tasks), batch_size=8, device="cpu")
    return {"hf": tiny_hf_dir(tmp_path / "hf"), "cfg": cfg, "out": tmp_path / "eval",
            "calls": calls}  # fmt: skip


def _run(setup: dict, cfg: EvalConfig | None = None, hf: Path | None = None) -> dict:
    cfg = cfg or setup["cfg"]
    return runner.evaluate_checkpoint(hf or setup["hf"], cfg, setup["out"], name="base")


def test_one_json_per_checkpoint_with_provenance_and_samples(setup: dict) -> None:
    results = _run(setup)
    stored = load_results(setup["out"] / "base.json")
    assert stored == results
    assert stored["model"]["sha256"] == model_identity(setup["hf"])["sha256"]
    (row,) = stored["results"]
    for key in ("task", "metric", "value", "stderr", "n", "shots", "harness", "add_bos_token"):
        assert row[key] is not None, key
    assert row["harness"].startswith("lm_eval 0.4") and row["add_bos_token"] is False
    assert row["bos_prepended"] is False
    assert row["protocol"] == "lm_eval" and row["dtype"] == row["settings"]["dtype"] == "float32"
    lines = (setup["out"] / "base.samples.jsonl").read_text().splitlines()
    assert len(lines) == len(ARC_ITEMS) and json.loads(lines[0])["task"] == ARC.name
    assert not list(setup["out"].glob("*.partial"))


def test_nothing_is_recomputed_for_the_same_checkpoint_and_settings(
    setup: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = _run(setup)
    monkeypatch.setattr(runner, "load_hf", lambda *a, **k: pytest.fail("model loaded"))
    assert _run(setup) == first
    assert setup["calls"] == [[ARC.name]]


def test_only_new_or_changed_tasks_are_computed(setup: dict) -> None:
    _run(setup)
    both = setup["cfg"].model_copy(update={"tasks": [ARC, ARC2]})
    results = _run(setup, both)
    assert setup["calls"] == [[ARC.name], [ARC2.name]]
    assert [r["task"] for r in results["results"]] == [ARC.name, ARC2.name]
    _run(setup, both.model_copy(update={"add_bos_token": True}))
    assert setup["calls"][2:] == [[ARC.name], [ARC2.name]]  # BOS changes every score
    only_second = _run(setup, both.model_copy(update={"add_bos_token": True, "tasks": [ARC2]}))
    assert len(setup["calls"]) == 4  # nothing new, and the other task's row is kept
    assert [r["task"] for r in only_second["results"]] == [ARC2.name, ARC.name]
    samples = (setup["out"] / "base.samples.jsonl").read_text().splitlines()
    assert len(samples) == 2 * len(ARC_ITEMS)


def test_another_dtype_is_evaluated_afresh_and_labelled(setup: dict) -> None:
    _run(setup)
    bf16 = _run(setup, setup["cfg"].model_copy(update={"dtype": "bfloat16"}))
    assert setup["calls"] == [[ARC.name], [ARC.name]]
    assert bf16["results"][0]["dtype"] == "bfloat16"
    _run(setup, setup["cfg"].model_copy(update={"dtype": "float32"}))  # = auto on cpu
    assert len(setup["calls"]) == 3 and _run(setup)["results"][0]["dtype"] == "float32"
    assert len(setup["calls"]) == 3


def test_another_checkpoint_under_the_same_name_is_evaluated_afresh(
    setup: dict, tmp_path: Path
) -> None:
    _run(setup)
    other = tiny_hf_dir(tmp_path / "other", seed=1)
    results = _run(setup, hf=other)
    assert setup["calls"] == [[ARC.name], [ARC.name]]
    assert results["model"]["sha256"] != model_identity(setup["hf"])["sha256"]


def test_store_ignores_rows_with_other_settings(tmp_path: Path) -> None:
    store = ResultStore(tmp_path, "x", {"path": "p", "sha256": "abc"})
    store.put({"task": "t", "value": 1.0, "settings": {"limit": 5}}, [{"doc_id": 0}])
    store.write()
    again = ResultStore(tmp_path, "x", {"path": "p", "sha256": "abc"})
    assert again.cached("t", {"limit": 5})["value"] == 1.0
    assert again.cached("t", {"limit": 6}) is None
    assert ResultStore(tmp_path, "x", {"path": "p", "sha256": "def"}).rows == {}


def test_table_and_figure_mark_chance(setup: dict) -> None:
    results = _run(setup)
    results["results"].append({"task": "perplexity/english", "metric": "bits_per_byte",
                               "value": 3.2, "kind": "perplexity"})  # fmt: skip
    table = scores_table(results)
    assert list(table.columns) == ["task", "metric", "value", "stderr", "n", "shots", "chance",
                                   "protocol", "dtype", "kind"]  # fmt: skip
    assert table[["protocol", "dtype"]].values.tolist()[0] == ["lm_eval", "float32"]
    fig = plot_scores(table, title="base")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == [f"{ARC.name} (acc_norm)"]
    chance = [c for c in ax.collections if c.get_label() == "chance"][0]
    assert chance.get_offsets()[0][0] == pytest.approx(0.25)
    with pytest.raises(EvalError, match="no benchmark scores"):
        plot_scores(table[table["kind"] == "perplexity"])


def test_a_run_stores_its_results_where_the_layout_says(tmp_path: Path) -> None:
    run = RunLayout(tmp_path)
    store = ResultStore(run.eval, "base", {"path": "p", "sha256": "abc"})
    assert store.json_path == run.eval_json("base")
    assert store.samples_path == run.eval_samples("base")


def test_missing_weights_or_results_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(EvalError, match="no \\*.safetensors"):
        model_identity(tmp_path)
    with pytest.raises(EvalError, match="run `tinylab eval` first"):
        load_results(tmp_path / "base.json")
    assert issubclass(EvalError, UserError)
