"""The evaluation runner: one exported checkpoint, one eval params file (the protocol: tasks and
who scores each, shots, metrics, BOS, dtype, HumanEval settings), scored by benchmarks (lm-eval,
or InstructEval's rules for MMLU, BBH and DROP), HumanEval and perplexity.

`evaluate_checkpoint` is what the CLI calls, `evaluate_stage` (a run's stage) what
notebooks/03_evaluate.ipynb calls. It first works out which rows of `<out>/<name>.json` are still
valid (same model hash, same settings) and loads the model only if something is left to compute;
lm-eval tasks run in batches (`batch_size`), one `simple_evaluate` per shot count, InstructEval's
tasks through tinylab.evaluate.instructeval, HumanEval programs in parallel sandboxes. Every row
records its protocol and the weights' dtype. Each finished part is written at once, so an
interrupted evaluation resumes where it stopped.

    tinylab eval outputs/runs/demo/stages/base/hf --params params/eval/demo.yaml \
        --out outputs/runs/demo/eval
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from tinylab.config.eval import EvalConfig, EvalTask
from tinylab.config.loader import ConfigError, load_config, project_path
from tinylab.evaluate import harness, humaneval, instructeval, offline, perplexity
from tinylab.evaluate.errors import EvalError
from tinylab.evaluate.results import ResultStore, model_identity
from tinylab.evaluate.sandbox import INTERPRETER, sandbox_mode
from tinylab.layout import RunLayout
from tinylab.model import load_hf, safetensors_problem
from tinylab.release import local_folder


class _Model:
    """The model (weights in `dtype`) and its tokenizer, each loaded on first use only."""

    def __init__(self, hf_dir: Path, device: str, dtype: str):
        self.hf_dir, self.device, self.dtype = hf_dir, device, dtype
        self._model: PreTrainedModel | None = None
        self._tokenizer: PreTrainedTokenizerBase | None = None

    def model(self) -> PreTrainedModel:
        if self._model is None:
            dtype = getattr(torch, self.dtype)
            self._model = load_hf(self.hf_dir, attention="sdpa", dtype=dtype).to(self.device)
            self._model.eval()
        return self._model

    def get(self) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
        if self._tokenizer is None:
            self._tokenizer = AutoTokenizer.from_pretrained(self.hf_dir)
        return self.model(), self._tokenizer


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def resolve_dtype(dtype: str, device: str) -> str:
    """The weights' dtype: `auto` is bfloat16 on cuda and float32 on cpu."""
    if dtype == "auto":
        return "bfloat16" if device == "cuda" else "float32"
    return dtype


def include_paths(cfg: EvalConfig, *, progress: bool = True) -> list[Path]:
    """Task folders for lm-eval: the built offline suites, then the params' include_path."""
    paths = [offline.ensure_suite(suite, progress=progress) for suite in cfg.suites]
    if cfg.include_path:
        paths.append(project_path(cfg.include_path))
    return paths


def lm_eval_settings(task: EvalTask, cfg: EvalConfig, dtype: str) -> dict:
    return {
        "kind": "lm_eval",
        "harness": harness.HARNESS,
        "shots": task.num_fewshot,
        "metric": task.metric,
        "limit": cfg.limit,
        "add_bos_token": cfg.add_bos_token,
        "offline_recipe": offline.RECIPE_VERSION if cfg.suites else None,
        "dtype": dtype,
    }


def evaluate_checkpoint(
    hf_dir: Path,
    cfg: EvalConfig,
    out_dir: Path,
    *,
    name: str,
    data_dir: Path | None = None,
    progress: bool = True,
) -> dict:
    """Evaluate `hf_dir` with `cfg`; write `<out_dir>/<name>.json` and `.samples.jsonl`.
    Rows already on disk for this model and these settings are reused, not recomputed."""
    hf_dir = Path(hf_dir)
    check_weights(hf_dir)
    store = ResultStore(Path(out_dir), name, model_identity(hf_dir))
    device = resolve_device(cfg.device)
    model = _Model(hf_dir, device, resolve_dtype(cfg.dtype, device))
    order = [t.name for t in cfg.tasks]
    _run_benchmarks(cfg, store, model, progress=progress)
    _run_instructeval(cfg, store, model)
    if cfg.humaneval is not None:
        order.append("humaneval")
        _run_humaneval(cfg, store, model)
    if cfg.perplexity and data_dir is not None:
        order += _run_perplexity(cfg, store, model, Path(data_dir))
    return store.write(order)


_REEXPORT = "delete the folder and rerun the stage's `tinylab train`, which exports it again"


def check_weights(hf_dir: Path) -> None:
    """Refuse a model folder whose config.json is no JSON or whose safetensors weights are
    missing, truncated or corrupt, with the file and what to do (reading the headers only: cheap,
    and before any result is reused)."""
    try:
        json.loads((hf_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise EvalError(f"{hf_dir / 'config.json'}: unreadable ({err}): {_REEXPORT}") from None
    problem = safetensors_problem(hf_dir)
    if problem is not None:
        raise EvalError(f"{problem}; evaluation needs a stage's HF export: {_REEXPORT}")


def evaluate_stage(
    eval_params: str | Path,
    run_dir: str | Path,
    stage: str,
    *,
    overrides: list[str] | tuple[str, ...] = (),
    release: str | None = None,
    revision: str | None = None,
    progress: bool = True,
) -> dict:
    """Evaluate a run's stage export (`<run>/stages/<stage>/hf`), or a released model under the
    name `stage` (`release`, `revision`: tinylab.release), into `<run>/eval/<stage>.json`, with
    perplexity on `<run>/data` when it exists. Relative paths are relative to the repo."""
    run = RunLayout(project_path(run_dir))
    cfg = load_config(project_path(eval_params), EvalConfig, overrides=list(overrides))
    hf_dir = run.stage(stage).hf if release is None else local_folder(release, revision)
    if not (hf_dir / "config.json").is_file():
        raise EvalError(f"{hf_dir}: no exported model; train stage {stage!r} of this run first")
    return evaluate_checkpoint(
        hf_dir,
        cfg,
        run.eval,
        name=stage,
        data_dir=run.data if run.data_index.is_file() else None,
        progress=progress,
    )


def _run_benchmarks(cfg: EvalConfig, store: ResultStore, model: _Model, *, progress: bool) -> None:
    pending = [
        t
        for t in cfg.tasks
        if t.protocol == "lm_eval"
        and store.cached(t.name, lm_eval_settings(t, cfg, model.dtype)) is None
    ]
    if not pending:
        return
    manager = harness.task_manager(include_paths(cfg, progress=progress), [t.name for t in pending])
    lm = harness.make_lm(*model.get(), add_bos_token=cfg.add_bos_token, batch_size=cfg.batch_size)
    for task in pending:  # one task at a time, so each finished task is on disk at once
        start = time.perf_counter()
        (row,), samples = harness.run_tasks(lm, [task], manager=manager, limit=cfg.limit)
        elapsed = time.perf_counter() - start
        records = samples[task.name]
        row.update(
            kind="lm_eval",
            protocol="lm_eval",
            dtype=model.dtype,
            chance=task.chance if task.chance is not None else _chance(records),
            add_bos_token=cfg.add_bos_token,
            bos_prepended=bos_prepended(lm.tokenizer, cfg.add_bos_token),
            harness=harness.HARNESS,
            seconds=elapsed,
            items_per_s=(row["n"] or 0) / elapsed,
            settings=lm_eval_settings(task, cfg, model.dtype),
        )
        store.put(row, records)
        store.write()


def _run_instructeval(cfg: EvalConfig, store: ResultStore, model: _Model) -> None:
    """The tasks of protocol instructeval, one at a time, each stored when done."""
    for task in cfg.tasks:
        if task.protocol != "instructeval":
            continue
        settings = {**instructeval.settings(task, limit=cfg.limit), "dtype": model.dtype}
        if store.cached(task.name, settings) is not None:
            continue
        start = time.perf_counter()
        row, records = instructeval.evaluate_task(
            *model.get(), task, limit=cfg.limit, batch_size=cfg.batch_size
        )
        elapsed = time.perf_counter() - start
        row.update(
            kind="instructeval",
            protocol="instructeval",
            dtype=model.dtype,
            chance=task.chance,
            add_bos_token=True,
            bos_prepended=model.get()[1].bos_token_id is not None,
            harness=f"tinylab instructeval ({instructeval.SOURCE})",
            seconds=elapsed,
            items_per_s=row["n"] / elapsed,
            settings=settings,
        )
        store.put(row, records)
        store.write()


def bos_prepended(tokenizer: PreTrainedTokenizerBase, add_bos_token: bool) -> bool:
    """Whether contexts really start with BOS, asked of the tokenizer lm-eval encodes with."""
    ids = tokenizer("a", add_special_tokens=add_bos_token)["input_ids"]
    return bool(ids) and tokenizer.bos_token_id is not None and ids[0] == tokenizer.bos_token_id


def _chance(records: list[dict]) -> float | None:
    sizes = [r["num_choices"] for r in records if r.get("num_choices")]
    return sum(1 / k for k in sizes) / len(sizes) if sizes else None


def _run_humaneval(cfg: EvalConfig, store: ResultStore, model: _Model) -> None:
    he = cfg.humaneval
    assert he is not None
    add_bos = he.bos(cfg.add_bos_token)
    settings = {
        "kind": "humaneval",
        **he.model_dump(mode="json"),
        "add_bos_token": add_bos,
        "sandbox": sandbox_mode(),
        "dtype": model.dtype,
        "interpreter": INTERPRETER,
    }
    if store.cached("humaneval", settings) is not None:
        return
    start = time.perf_counter()
    scores, records = humaneval.evaluate_humaneval(*model.get(), he, add_bos_token=add_bos)
    elapsed = time.perf_counter() - start
    headline = f"pass@{he.ks[0]}"
    row = {
        "task": "humaneval",
        "metric": headline,
        "value": scores[headline]["value"],
        "stderr": scores[headline]["stderr"],
        "n": scores[headline]["n"],
        "shots": 0,
        "metrics": {k: v["value"] for k, v in scores.items()},
        "kind": "humaneval",
        "protocol": he.protocol,
        "dtype": model.dtype,
        "chance": 0.0,
        "add_bos_token": add_bos,
        "harness": f"tinylab sandbox ({sandbox_mode()})",
        "seconds": elapsed,
        "items_per_s": scores[headline]["n"] * he.num_samples / elapsed,
        "settings": settings,
    }
    store.put(row, records)
    store.write()


def _check_same_tokenizer(model: _Model, data_tokenizer: Path) -> None:
    """Perplexity on data tokenized by another tokenizer would be meaningless: refuse it."""
    if (
        not (model.hf_dir / "tokenizer.json").is_file()
        and not (model.hf_dir / "tokenizer_config.json").is_file()
    ):
        return  # a bare export: nothing to compare (the data's ids index its embedding)
    ours = model.get()[1].get_vocab()
    theirs = AutoTokenizer.from_pretrained(data_tokenizer).get_vocab()
    if ours != theirs:
        raise ConfigError(
            f"{model.hf_dir}: its tokenizer differs from the data's ({data_tokenizer}); "
            "perplexity needs the data the model was trained on (or set perplexity: false)"
        )


def _run_perplexity(cfg: EvalConfig, store: ResultStore, model: _Model, data_dir: Path) -> list:
    from tinylab.data import PackedData

    data = PackedData.open(data_dir)
    _check_same_tokenizer(model, data.tokenizer_dir)
    settings = {
        "kind": "perplexity",
        "max_windows": cfg.perplexity_max_windows,
        "tokenizer_sha256": data.tokenizer_sha256,
        "data_dir": str(data_dir.resolve()),
        "dtype": model.dtype,
    }
    names = [f"perplexity/{domain}" for domain in data.domains]
    if all(store.cached(n, settings) is not None for n in names):
        return names
    start = time.perf_counter()
    rows = perplexity.domain_perplexity(
        model.model(), data, max_windows=cfg.perplexity_max_windows, batch_size=cfg.batch_size
    )
    elapsed = time.perf_counter() - start
    for row, windows in rows:
        row.update(
            kind="perplexity",
            protocol="tinylab",
            dtype=model.dtype,
            chance=None,
            add_bos_token=None,
            harness="tinylab",
            seconds=elapsed,
            settings=settings,
        )
        store.put(row, windows)
    store.write()
    return [row["task"] for row, _ in rows]
