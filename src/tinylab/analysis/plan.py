"""A pipeline's plan before anything runs, read from its params alone: per step what it trains
(token budget, batch, where it starts, the schedule position in tokens at its start and end, the
end of the cosine, its own learning-rate cooldown if any, and the stage it is the counterfactual
of) or scores, and the paper's row (docs/PAPER.md, "Reported results") each
evaluation sits beside: a release's own row (reference.RELEASE_ROWS), or its variant's row for a
stage of the v1.1 variants (the paper reports the variants after cooldown only).

    tinylab run params/pipelines/tinyllama-v1.1-from-release.yaml --dry-run
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from tinylab.analysis.reference import RELEASE_ROWS
from tinylab.config.loader import load_config, project_path
from tinylab.config.pipeline import PipelineConfig
from tinylab.config.stage import StageConfig, check_counterfactuals

VARIANT_ROWS = {
    "general": "TinyLlama v1.1",
    "mathcode": "TinyLlama v1.1 Math&Code",
    "chinese": "TinyLlama v1.1 Chinese",
}


def pipeline_plan(pipeline_path: str | Path) -> pd.DataFrame:
    """One row per step: step, notebook, stage, starts from, tokens, batch, schedule start and end
    (tokens seen since the first stage), decay end, LR cooldown (schedule.cooldown), the stage it
    is the counterfactual of, and the paper row beside an evaluation."""
    pipeline = load_config(project_path(pipeline_path), PipelineConfig)
    stages: dict[str, StageConfig] = {}  # params file -> stage
    ends: dict[str, int] = {}  # stage -> schedule position at its end
    roots: dict[str, str | None] = {}  # stage -> the release its chain starts from, if any
    rows = []
    for step in pipeline.steps:
        row = {"step": step.name, "notebook": step.notebook}
        if "stage_params" in step.params:
            stage = load_config(project_path(step.params["stage_params"]), StageConfig)
            stages[step.params["stage_params"]] = stage
            start = schedule_start(stage, ends)
            steps = math.ceil(stage.max_tokens / stage.global_batch_tokens)
            end = ends[stage.name] = start + steps * stage.global_batch_tokens
            init = stage.init_from
            roots[stage.name] = init and (init.release or roots.get(init.stage))
            of = stage.counterfactual.of if stage.counterfactual else ""
            row |= {"stage": stage.name, "from": origin(stage), "tokens": f"{stage.max_tokens:,}",
                    "batch": f"{stage.global_batch_tokens:,}", "schedule_start": f"{start:,}",
                    "schedule_end": f"{end:,}", "decay_end": f"{stage.schedule.decay_tokens:,}",
                    "lr_cooldown": stage.schedule.cooldown or "",
                    "counterfactual_of": of}  # fmt: skip
        elif "stage" in step.params:
            release = step.params.get("release")
            name = step.params["stage"]
            row |= {"stage": name, "from": release or "",
                    "paper_row": paper_row(name, release or roots.get(name),
                                           step.params.get("revision"),
                                           trained=release is None)}  # fmt: skip
        rows.append(row)
    check_counterfactuals(stages, pipeline=pipeline.name)
    columns = ["step", "notebook", "stage", "from", "tokens", "batch", "schedule_start",
               "schedule_end", "decay_end", "lr_cooldown", "counterfactual_of",
               "paper_row"]  # fmt: skip
    return pd.DataFrame(rows, columns=columns).fillna("")


def schedule_start(stage: StageConfig, ends: dict[str, int]) -> int:
    """Tokens seen when the stage starts: a release's `tokens`, its parent's end when the
    schedule is carried, else 0."""
    init = stage.init_from
    if init is None or "schedule" not in init.carry:
        return 0
    return init.tokens if init.release is not None else ends.get(init.stage, 0)


def origin(stage: StageConfig) -> str:
    init = stage.init_from
    if init is None:
        return "scratch"
    if init.release is not None:
        return f"release {init.release}" + (f"@{init.revision}" if init.revision else "")
    return f"stage {init.stage}"


def paper_row(stage: str, release: str | None, revision: str | None, *, trained: bool) -> str:
    """The paper's row an evaluation sits beside ('' when none): a release's own; for a stage
    trained here, its variant's, unless its chain starts from a model the paper did not train."""
    if not trained:
        return RELEASE_ROWS.get((release, revision or "main"), "")
    if release is not None and not release.startswith("TinyLlama/"):
        return ""
    variant = stage.partition("-")[2]
    row = VARIANT_ROWS.get(variant, "")
    return f"{row} (after cooldown)" if row and stage.startswith("continual-") else row
