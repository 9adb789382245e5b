"""Where a run departs from the paper: its resolved settings against the paper's facts
(params/paper/tinyllama-v1.1.yaml), each deviation with the paper's value, the run's, whether the
paper states or we assume the fact, and why the run differs (the pipeline's `deviations:`).

The run side is a `RunSettings`: the resolved stages, processes per stage, the eval protocol of
each evaluated stage and, for a finished run, the protocol its results recorded (harness, shots,
metric, BOS, dtype). It comes from a pipeline file before anything runs (`pipeline_settings`) or
from a run folder afterwards (`run_settings`). A stage the paper does not have (the LoRA stages) is
one row, "not in the paper"; so are the tasks the paper does not report.

    tinylab deviations params/pipelines/tinyllama-v1.1.yaml     # from its params, no training
    deviation_table(run_settings(load_run("outputs/runs/demo")))
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from pydantic import ValidationError

from tinylab.analysis.runs import Run
from tinylab.config.eval import EvalConfig
from tinylab.config.kinds import load_params
from tinylab.config.loader import PARAMS_DIR, load_config, project_path
from tinylab.config.paper import EVAL_FACTS, Fact, PaperFacts
from tinylab.config.pipeline import DeviationReason, PipelineConfig
from tinylab.config.stage import StageConfig
from tinylab.errors import UserError
from tinylab.evaluate.results import load_results
from tinylab.layout import RunLayout

PAPER_FACTS = PARAMS_DIR / "paper" / "tinyllama-v1.1.yaml"
COLUMNS = ["where", "fact", "paper", "this run", "status", "why", "source"]
NOT_IN_PAPER = "not in the paper"


class DeviationsError(UserError):
    """A pipeline's `deviations:` names something the paper's facts do not have."""


@dataclass
class RunSettings:
    """What a run is set to do, as far as the paper's facts speak about it."""

    stages: dict[str, StageConfig]
    nproc: dict[str, int] = field(default_factory=dict)  # processes per stage; default 1
    evals: dict[str, EvalConfig] = field(default_factory=dict)  # eval protocol per stage
    recorded: dict[str, dict[str, dict]] = field(default_factory=dict)  # stage -> task -> row
    reasons: dict[str, DeviationReason] = field(default_factory=dict)
    where: str = "the run"  # the pipeline file, for error messages


# --------------------------------------------------------------------------------------------
# The run side


def pipeline_settings(pipeline_path: Path | str) -> RunSettings:
    """A pipeline's settings from its params files alone: nothing runs."""
    path = project_path(pipeline_path)
    pipeline = load_config(path, PipelineConfig)
    stages, nproc, evals = {}, {}, {}
    for step in pipeline.steps:
        if "stage_params" in step.params:
            stage = load_params(project_path(step.params["stage_params"]))
            stages[stage.name] = stage
            nproc[stage.name] = int(step.params.get("nproc", 1))
        if "eval_params" in step.params:
            evals[step.params["stage"]] = load_params(project_path(step.params["eval_params"]))
    return RunSettings(stages, nproc, evals, {}, pipeline.deviations, str(pipeline_path))


def run_settings(run: Run) -> RunSettings:
    """A finished (or partly finished) run's settings: its stages' resolved.yaml, the processes
    and eval params its manifest records, the protocol its results record, and the reasons of
    the pipeline file it ran."""
    layout = RunLayout(run.run_dir)
    nproc, evals = {}, {}
    for record in run.manifest.get("steps", {}).values():
        params, resolved = record.get("params", {}), record.get("resolved", {})
        if "stage_params" in resolved:
            name = yaml.safe_load(resolved["stage_params"])["name"]
            nproc[name] = int(params.get("nproc", 1))
        if "eval_params" in resolved:
            evals[params["stage"]] = _recorded_eval_params(run.run_dir, params, resolved)
    recorded = {
        path.stem: {row["task"]: row for row in load_results(path)["results"]}
        for path in sorted(layout.eval.glob("*.json"))
    }
    pipeline = run.manifest.get("pipeline")
    reasons, where = {}, str(run.run_dir)
    if pipeline and project_path(pipeline).is_file():
        reasons, where = load_config(project_path(pipeline), PipelineConfig).deviations, pipeline
    return RunSettings(run.stages, nproc, evals, recorded, reasons, where)


def _recorded_eval_params(run_dir: Path, params: dict, resolved: dict) -> EvalConfig:
    """The eval params a step ran with, as its manifest recorded them."""
    try:
        return EvalConfig.model_validate(yaml.safe_load(resolved["eval_params"]))
    except ValidationError as err:
        raise DeviationsError(
            f"{run_dir}: the eval params that evaluated {params['stage']!r} "
            f"({params['eval_params']}) no longer validate ({err.error_count()} error(s), first: "
            f"{err.errors()[0]['msg']}); they predate the current schema: run the pipeline "
            "again to re-evaluate with the current params"
        ) from None


def stage_value(name: str, stage: StageConfig, nproc: int = 1) -> Any:
    """The run's value of a training fact (see tinylab.config.paper) in one stage."""
    domains = {source: spec.domain for source, spec in stage.data.sources.items()}
    if name == "mixture":
        total = sum(stage.mixture.values())
        shares: dict[str, float] = {}
        for source, weight in stage.mixture.items():
            if weight > 0:
                shares[domains[source]] = shares.get(domains[source], 0) + 100 * weight / total
        return shares
    if name == "parallelism":
        if stage.parallel.replicate_nodes > 1:
            return "HSDP"
        if nproc > 1:
            return f"FSDP2 over {nproc} processes"
        return "FSDP2 on one process" if stage.parallel.single_process == "fsdp" else "one process"
    if name.startswith(("dataset.", "exclude.")):
        kind, domain = name.split(".")
        sources = [spec for spec in stage.data.sources.values() if spec.domain == domain]
        if kind == "exclude":
            return {k: v for spec in sources for k, v in getattr(spec, "exclude", {}).items()}
        return ", ".join(_dataset(spec) for spec in sources) or None
    value: Any = stage
    for part in name.split("."):
        if value is None:
            return None
        value = getattr(value, f"resolved_{part}", getattr(value, part))
    return value


def _dataset(spec: Any) -> str:
    if spec.kind == "hub":
        return spec.path
    return f"demo corpus {spec.corpus}" if spec.kind == "demo" else "local files"


def eval_value(name: str, task: str, protocol: EvalConfig, recorded: dict | None) -> Any:
    """The run's value of an evaluation fact for one task: what its result recorded, else what
    its eval params will do."""
    recorded = recorded or {}
    spec = next((t for t in protocol.tasks if t.name == task), None)
    if name == "protocol":
        planned = protocol.humaneval.protocol if spec is None else spec.protocol
        return recorded.get("protocol", planned)
    if name == "harness":
        planned = {
            "lm_eval": f"lm_eval {_version('lm_eval')}",
            "instructeval": "tinylab instructeval",
        }
        return recorded.get(
            "harness", "tinylab sandbox" if spec is None else planned[spec.protocol]
        )
    if name == "shots":
        return recorded.get("shots", 0 if spec is None else spec.num_fewshot)
    if name == "metric":
        default = f"pass@{protocol.humaneval.ks[0]}" if spec is None else spec.metric
        return recorded.get("metric", default)
    if name == "bos":  # instructeval tasks always prepend BOS (tinylab.config.eval)
        if spec is None:
            planned = protocol.humaneval.bos(protocol.add_bos_token)
        else:
            planned = protocol.add_bos_token or spec.protocol == "instructeval"
        return recorded.get("bos_prepended", recorded.get("add_bos_token", planned))
    if name == "dtype":  # auto: bfloat16 on cuda, float32 on cpu (evaluate.runner.resolve_dtype)
        by_device = {
            "cpu": "float32",
            "cuda": "bfloat16",
            "auto": "bfloat16 on GPU, float32 on CPU",
        }
        planned = by_device[protocol.device] if protocol.dtype == "auto" else protocol.dtype
        return recorded.get("dtype", planned)
    if name == "sampling":
        return _sampling(recorded.get("settings") or protocol.humaneval.model_dump())
    raise ValueError(f"no evaluation fact {name!r}; known: {', '.join(EVAL_FACTS)}")


def _sampling(he: dict[str, Any]) -> str:
    """HumanEval's generation settings in the words of the paper's fact."""
    samples = f"{he['num_samples']} sample{'s' if he['num_samples'] > 1 else ''}"
    top_p = f", top_p {he['top_p']:g}" if he["top_p"] < 1 else ""
    prompt = "instruction prefix" if he["protocol"] == "instructeval" else "Codex prompt"
    stop = ", ".join(map(repr, he["stop"]))
    cut = f"stop at {stop}" if he["stop"] else "cut at the first blank line"
    tokens = f"{he['max_new_tokens']} new tokens"
    return f"{samples}, T={he['temperature']:g}{top_p}, {prompt}, {tokens}, {cut}"


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "(not installed)"


# --------------------------------------------------------------------------------------------
# Comparing


def deviations(settings: RunSettings, facts: PaperFacts) -> list[dict[str, Any]]:
    """One row per deviation (rows that differ only in their stage or task are merged)."""
    check_reasons(settings, facts)
    rows = _stage_rows(settings, facts) + _eval_rows(settings, facts)
    for row in rows:
        reason = _reason(row.pop("key"), settings.reasons)
        row["why"] = f"{reason.kind}: {reason.note}" if reason else "(no reason given)"
    return _merge(rows, everywhere=[s for s in settings.stages if s in facts.stage_names()])


def _stage_rows(settings: RunSettings, facts: PaperFacts) -> list[dict[str, Any]]:
    rows = []
    paper_stages = facts.stage_names()
    for name, stage in settings.stages.items():
        if name not in paper_stages:
            rows.append(_row(f"stage.{name}", name, "stage", NOT_IN_PAPER, describe(stage)))
            continue
        nproc = settings.nproc.get(name, 1)
        for fact in {**facts.training_facts(), **facts.stage_facts(name)}.values():
            ours = stage_value(fact.name, stage, nproc)
            if not same(fact.value, ours):
                rows.append(_row(fact.name, name, fact.name, fact.value, ours, fact))
    missing = [s for s in paper_stages if s not in settings.stages]
    if missing:
        rows.append(_row("stages", "pipeline", "stages", ", ".join(missing), "not run"))
    return rows


def _eval_rows(settings: RunSettings, facts: PaperFacts) -> list[dict[str, Any]]:
    rows = []
    for stage, protocol in settings.evals.items():
        tasks = [t.name for t in protocol.tasks] + (["humaneval"] if protocol.humaneval else [])
        extra = [task for task in tasks if facts.group_of(task) is None]
        if extra:
            rows.append(_row("eval.tasks", ", ".join(extra), "tasks", NOT_IN_PAPER, "evaluated"))
        for group_name, group in facts.evaluation.items():
            ran = [task for task in group.tasks if task in tasks]
            if len(ran) < len(group.tasks):
                skipped = ", ".join(t for t in group.tasks if t not in ran)
                key = f"eval.{group_name}.tasks"
                rows.append(_row(key, group_name, "tasks", skipped, "not evaluated"))
            for task in ran:
                recorded = settings.recorded.get(stage, {}).get(task)
                for fact in group.by_name().values():
                    paper = fact.value
                    if isinstance(paper, dict):
                        paper = paper.get(task)
                    ours = eval_value(fact.name, task, protocol, recorded)
                    if not same(paper, ours):
                        key = f"eval.{group_name}.{fact.name}"
                        rows.append(
                            _row(key, task, f"{group_name}: {fact.name}", paper, ours, fact)
                        )
    return rows


def _row(key: str, where: str, name: str, paper: Any, ours: Any, fact: Fact | None = None) -> dict:
    return {
        "key": key,
        "where": where,
        "fact": name,
        "paper": show(paper),
        "this run": show(ours),
        "status": "" if fact is None else fact.status,
        "source": "" if fact is None else f"docs/PAPER.md, {fact.section!r}; {fact.cites}",
        "why": "",
    }


def _merge(rows: list[dict[str, Any]], *, everywhere: list[str]) -> list[dict[str, Any]]:
    """Rows equal but for `where` become one, their places joined; a training fact that differs
    in every paper stage of the run says "all stages"."""
    merged: dict[tuple, dict[str, Any]] = {}
    for row in rows:
        key = tuple(row[c] for c in COLUMNS if c != "where")
        if key in merged:
            merged[key]["where"].append(row["where"])
        else:
            merged[key] = {**row, "where": [row["where"]]}
    for row in merged.values():
        places = list(dict.fromkeys(row["where"]))
        all_stages = len(everywhere) > 1 and places == everywhere
        row["where"] = "all stages" if all_stages else ", ".join(places)
    return [{c: row[c] for c in COLUMNS} for row in merged.values()]


def same(paper: Any, ours: Any) -> bool:
    """Equal values, numbers up to float rounding (1.5e12 == 1500000000000)."""
    if isinstance(paper, dict) and isinstance(ours, dict):
        return paper.keys() == ours.keys() and all(same(paper[k], ours[k]) for k in paper)
    if isinstance(paper, list | tuple) and isinstance(ours, list | tuple):
        return len(paper) == len(ours) and all(map(same, paper, ours))
    numbers = (int, float)
    if isinstance(paper, numbers) and isinstance(ours, numbers):
        if isinstance(paper, bool) or isinstance(ours, bool):
            return paper is ours
        return math.isclose(paper, ours, rel_tol=1e-9)
    return paper == ours


def show(value: Any) -> str:
    """A value as the table shows it."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer() and abs(value) >= 1e6:
        value = int(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, dict):
        return ", ".join(f"{k} {show(v)}" for k, v in value.items()) or "none"
    if isinstance(value, list | tuple):
        return ", ".join(show(v) for v in value)
    return str(value)


def describe(stage: StageConfig) -> str:
    """A stage the paper lacks, in a line: how it trains, from what, on what."""
    how = "all weights"
    if stage.adapter is not None:
        adapter = stage.adapter
        how = f"{adapter.type} adapter r={adapter.rank} alpha={adapter.alpha:g}"
    parent = "scratch" if stage.init_from is None else stage.init_from.stage
    mixture = show({k: round(v) for k, v in stage_value("mixture", stage).items()})
    return f"{how} from {parent}, {mixture} (%), {show(stage.max_tokens)} tokens"


# --------------------------------------------------------------------------------------------
# Reasons


def _reason(key: str, reasons: dict[str, DeviationReason]) -> DeviationReason | None:
    """The reason of the longest name that is `key` or a dotted prefix of it."""
    matches = [name for name in reasons if key == name or key.startswith(name + ".")]
    return reasons[max(matches, key=len)] if matches else None


def check_reasons(settings: RunSettings, facts: PaperFacts) -> None:
    """Every name in the pipeline's `deviations:` must name a fact, a group of facts, a stage
    (stage.<name>) or the pipeline's stages or tasks; DeviationsError otherwise."""
    known = set(facts.training_facts()) | {"stages", "eval.tasks"}
    known |= {name for stage in facts.stage_names() for name in facts.stage_facts(stage)}
    known |= {
        f"eval.{group}.{name}"
        for group, spec in facts.evaluation.items()
        for name in [*spec.by_name(), "tasks"]
    }
    for name in settings.reasons:
        if name.startswith("stage.") or any(k == name or k.startswith(name + ".") for k in known):
            continue
        raise DeviationsError(
            f"{settings.where}: deviations.{name}: no such fact in {facts.name}'s facts; name a "
            "fact (optim.lr, model.hidden_size, mixture, ...), a group (model, optim, eval, "
            "eval.commonsense), stage.<name>, stages or eval.tasks"
        )


# --------------------------------------------------------------------------------------------
# Tables


def deviation_table(settings: RunSettings, paper: Path = PAPER_FACTS) -> pd.DataFrame:
    """deviations() of a run's settings from the paper's facts, as a table."""
    facts = load_config(paper, PaperFacts)
    return pd.DataFrame(deviations(settings, facts), columns=COLUMNS)


def assumptions(paper: Path = PAPER_FACTS) -> pd.DataFrame:
    """The facts that this project assumes rather than the sources state: fact (with its stages
    or its evaluation group), value, why."""
    facts = load_config(paper, PaperFacts)
    blocks = [("", block) for block in facts.training]
    blocks += [(f" ({', '.join(block.stages)})", block) for block in facts.stages]
    rows = [
        {"fact": f"{name}{where}", "assumed value": show(value), "why": block.why}
        for where, block in blocks
        if block.status == "assumed"
        for name, value in block.facts.items()
    ]
    rows += [
        {"fact": f"eval.{group}.{fact.name}", "assumed value": show(fact.value), "why": fact.why}
        for group, spec in facts.evaluation.items()
        for fact in spec.by_name().values()
        if fact.status == "assumed"
    ]
    return pd.DataFrame(rows, columns=["fact", "assumed value", "why"])


def format_table(table: pd.DataFrame) -> str:
    """The table as text, one deviation per paragraph (what `tinylab deviations` prints)."""
    lines = []
    for row in table.to_dict("records"):
        status = f" ({row['status']})" if row["status"] else ""
        lines.append(f"{row['where']}: {row['fact']}{status}")
        lines.append(f"    paper: {row['paper']}")
        lines.append(f"    run:   {row['this run']}")
        lines.append(f"    why:   {row['why']}")
    return "\n".join(lines) if lines else "no deviations from the paper's facts"
