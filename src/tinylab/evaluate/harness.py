"""lm-evaluation-harness as a library on tinylab's model object: no scoring of our own.

We wrap the already-loaded `LlamaForCausalLM` in lm-eval's `HFLM` and call `simple_evaluate`,
so hub tasks (hellaswag, arc_easy, ...) and the offline suites under the cache go through the
same code, and the numbers equal those of the `lm_eval` command line on the exported folder
(tests/test_evaluate_harness.py checks). BOS is a parameter: the paper's harness added none, so
`add_bos_token=False` is the default and every result records the setting used. BOS on means
BOS on: the tokenizer is set up the way the command line loads it (`add_bos_token=True` given to
`from_pretrained`), so a tokenizer that adds no BOS by itself gets one here too.

    tinylab eval HF_DIR --params params/eval/demo.yaml --out DIR
"""

from __future__ import annotations

import copy
import functools
import logging
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import lm_eval
import torch
from lm_eval.models.huggingface import HFLM
from lm_eval.tasks import TaskManager
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from tinylab.config.eval import EvalTask
from tinylab.config.loader import ConfigError

HARNESS = f"lm_eval {lm_eval.__version__}"
# Per-sample fields kept in samples.jsonl (the doc itself is left out: it can be large).
_SAMPLE_KEYS = ("doc_id", "target", "filtered_resps", "doc_hash")


def make_lm(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    *,
    add_bos_token: bool = False,
    batch_size: int = 16,
) -> HFLM:
    """lm-eval's HF wrapper around a loaded model (no copy, no re-loading)."""
    return HFLM(
        pretrained=model,
        tokenizer=with_bos(tokenizer) if add_bos_token else tokenizer,
        add_bos_token=add_bos_token,
        batch_size=batch_size,
        max_length=model.config.max_position_embeddings,
        softmax_dtype=torch.float32,  # bf16 weights on GPU, log-probabilities in fp32
    )


def with_bos(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """A copy of `tokenizer` that prepends BOS, as `from_pretrained(..., add_bos_token=True)`
    makes it for lm-eval's command line (lm-eval passes add_bos_token only to a tokenizer it
    loads itself; given one, it just asks for special tokens, which may hold no BOS)."""
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.add_bos_token = True
    ids = tokenizer("a")["input_ids"]
    if tokenizer.bos_token_id is None or not ids or ids[0] != tokenizer.bos_token_id:
        raise ConfigError(
            f"add_bos_token: true, but the tokenizer of {tokenizer.name_or_path or 'the model'} "
            "cannot prepend BOS (it has no BOS token); set add_bos_token: false"
        )
    return tokenizer


def task_manager(include_paths: Iterable[Path], names: Iterable[str] = ()) -> TaskManager:
    """lm-eval's task registry over our local task folders, plus its built-in tasks only when a
    task is not found locally (indexing the ~10k built-in YAML files takes ~30 s on a laptop,
    so registries are cached per process)."""
    paths = tuple(str(p) for p in include_paths)
    for path in paths:
        if not Path(path).is_dir():
            raise ConfigError(f"include_path {path}: not a folder of lm-eval task YAML")
    names = list(names)
    local = _manager(paths, include_defaults=False) if paths else None
    if local is not None and all(name in local.all_tasks for name in names):
        return local
    builtin = _manager((), include_defaults=True)
    known = set(builtin.all_tasks) | set(local.all_tasks if local is not None else ())
    missing = [name for name in names if name not in known]
    if missing:
        raise ConfigError(
            f"lm-eval does not know tasks {missing}; offline suites need `suites:` in the eval "
            f"params, local tasks an include_path"
        )
    return builtin if not paths else _manager(paths, include_defaults=True)


@functools.lru_cache(maxsize=8)
def _manager(paths: tuple[str, ...], *, include_defaults: bool) -> TaskManager:
    return TaskManager(include_path=list(paths) or None, include_defaults=include_defaults)


def run_tasks(
    lm: HFLM,
    tasks: Sequence[EvalTask],
    *,
    manager: TaskManager,
    limit: int | None = None,
) -> tuple[list[dict], dict[str, list[dict]]]:
    """Evaluate tasks (grouped by shot count, one simple_evaluate call per group).
    Returns (one score row per task, per-sample records by task)."""
    missing = [t.name for t in tasks if t.name not in manager.all_tasks]
    if missing:
        raise ConfigError(
            f"lm-eval does not know tasks {missing}; offline suites need `suites:` in the eval "
            f"params, local tasks an include_path"
        )
    rows: list[dict] = []
    samples: dict[str, list[dict]] = {}
    for shots in sorted({t.num_fewshot for t in tasks}):
        group = [t for t in tasks if t.num_fewshot == shots]
        out = _simple_evaluate(lm, [t.name for t in group], manager, shots=shots, limit=limit)
        for task in group:
            rows.append(score_row(out, task))
            samples[task.name] = sample_records(out.get("samples", {}), task.name)
    return rows, samples


def _simple_evaluate(
    lm: HFLM, names: list[str], manager: TaskManager, *, shots: int, limit: int | None
) -> dict[str, Any]:
    logging.getLogger("lm_eval").setLevel(logging.WARNING)
    out = lm_eval.simple_evaluate(
        model=lm,
        tasks=names,
        num_fewshot=shots,
        limit=limit,
        task_manager=manager,
        log_samples=True,
        bootstrap_iters=1000,
        random_seed=0,
        numpy_random_seed=1234,
        torch_random_seed=1234,
        fewshot_random_seed=1234,
    )
    if out is None:  # only on non-zero ranks of a distributed run
        raise RuntimeError("lm_eval.simple_evaluate returned no results")
    return out


def score_row(out: dict[str, Any], task: EvalTask) -> dict:
    """The headline metric of one task from simple_evaluate's output, with all its metrics."""
    results = out["results"].get(task.name)
    if results is None:
        raise RuntimeError(f"lm-eval returned no results for {task.name}")
    metrics = {
        key.split(",")[0]: _number(value)
        for key, value in results.items()
        if "," in key and "_stderr" not in key
    }
    if task.metric not in metrics:
        raise ConfigError(
            f"task {task.name}: metric {task.metric!r} not reported; it has {sorted(metrics)}"
        )
    stderr = next(
        (v for k, v in results.items() if k.split(",")[0] == f"{task.metric}_stderr"), None
    )
    n = out.get("n-samples", {}).get(task.name, {}).get("effective")
    return {
        "task": task.name,
        "metric": task.metric,
        "value": metrics[task.metric],
        "stderr": _number(stderr),
        "n": n if n is not None else _group_size(out, task.name),
        "shots": task.num_fewshot,
        "metrics": metrics,
        "version": out.get("versions", {}).get(task.name),
    }


def _group_size(out: dict[str, Any], name: str) -> int | None:
    subtasks = out.get("group_subtasks", {}).get(name) or []
    sizes = [out.get("n-samples", {}).get(s, {}).get("effective") for s in subtasks]
    return sum(sizes) if sizes and None not in sizes else None


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def sample_records(samples: dict[str, list[dict]], name: str) -> list[dict]:
    """Per-sample records of a task (a group's subtasks included), JSON-safe."""
    records = []
    for task_name, items in samples.items():
        if task_name != name and not task_name.startswith(f"{name}_"):
            continue
        for item in items:
            record = {"subtask": task_name, **{k: item.get(k) for k in _SAMPLE_KEYS}}
            record["num_choices"] = len(item.get("arguments") or []) or None
            record.update({k: v for k, v in item.items() if k in _METRIC_KEYS})
            records.append(_json_safe(record))
    return records


_METRIC_KEYS = ("acc", "acc_norm", "exact_match", "em", "f1", "mcc")


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, str | int | bool) or value is None:
        return value
    if isinstance(value, float):
        return None if math.isnan(value) else value
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)
