"""The published report: 04_report executed on a run, rendered to one self-contained HTML file.

The report notebook reads the run folder's files (never other notebooks' outputs); nbconvert
renders it with the code hidden and images embedded, so report.html can be mailed or hosted as
one file (only MathJax, for formulas, comes from a CDN).

    tinylab report outputs/runs/demo
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from tinylab.analysis import figures
from tinylab.analysis.reference import paper_commonsense
from tinylab.analysis.runs import Run, benchmark_table, stage_deltas
from tinylab.config import (
    PARAMS_DIR,
    PROJECT_ROOT,
    ConfigError,
    StageConfig,
    load_config,
    project_path,
)
from tinylab.files import write_atomic

TEMPLATE = Path(__file__).parent / "templates" / "report.html.j2"
REPORT_NOTEBOOK = PROJECT_ROOT / "notebooks" / "04_report.ipynb"
PAPER_STAGES_DIR = PARAMS_DIR / "stages" / "tinyllama-v1.1"


def compared_settings(stage: StageConfig) -> dict[str, str]:
    """What a reader compares with the paper, per stage, as display strings."""
    tokenizer = stage.data.tokenizer
    sources = {
        name: getattr(src, "path", None) or getattr(src, "corpus", None) or "local files"
        for name, src in sorted(stage.data.sources.items())
    }
    settings = {
        "model width x layers": f"{stage.model.hidden_size} x {stage.model.num_hidden_layers}",
        "vocabulary": stage.model.vocab_size,
        "tokenizer": f"{tokenizer.kind} {tokenizer.name_or_path or ''}".strip(),
        "sources": ", ".join(f"{name}={where}" for name, where in sources.items()),
        "sequence length": stage.data.seq_len,
        "tokens in stage": f"{stage.max_tokens:.3g}",
        "global batch (tokens)": stage.global_batch_tokens,
        "mixture": _weights(stage.mixture),
        "ramp (tokens)": None if stage.ramp is None else f"{stage.ramp.tokens:.3g}",
        "peak / min LR": f"{stage.optim.lr:g} / {stage.optim.min_lr:g}",
        "warmup / decay tokens": f"{stage.schedule.warmup_tokens:.3g} / "
        f"{stage.schedule.decay_tokens:.3g}",
        "AdamW betas, eps, wd": f"{stage.optim.betas}, {stage.optim.eps:g}, "
        f"{stage.optim.weight_decay:g}",
        "grad clip": stage.optim.grad_clip,
        "precision": stage.parallel.precision,
        "init from": None
        if stage.init_from is None
        else f"{stage.init_from.stage} ({', '.join(stage.init_from.carry)})",
        "adapter": _adapter(stage),
    }
    return {key: str(value) for key, value in settings.items()}


def _adapter(stage: StageConfig) -> str:
    adapter = stage.adapter
    if adapter is None:
        return "none (all weights train)"
    return (
        f"{adapter.type} r={adapter.rank} alpha={adapter.alpha:g} dropout={adapter.dropout:g} "
        f"on {', '.join(adapter.target_modules)}"
    )


def _weights(weights: dict[str, float]) -> str:
    total = sum(weights.values())
    return ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in weights.items() if v > 0)


def paper_stage_configs(folder: Path = PAPER_STAGES_DIR) -> dict[str, StageConfig]:
    """The paper pipeline's stages, by stage name."""
    configs = {}
    for path in sorted(folder.glob("*.yaml")):
        config = load_config(path, StageConfig)
        configs[config.name] = config
    return configs


def deviations(ours: dict[str, StageConfig], paper: dict[str, StageConfig]) -> list[dict[str, Any]]:
    """Rows (stage, setting, paper, this run) for every compared setting that differs from the
    paper stage of the same name; a stage the paper lacks is one row of its own."""
    rows = []
    for name, stage in ours.items():
        reference = paper.get(name)
        if reference is None:
            rows.append({"stage": name, "setting": "stage", "paper": "(none)", "this run": name})
            continue
        paper_settings = compared_settings(reference)
        for label, value in compared_settings(stage).items():
            if value != paper_settings[label]:
                row = {"stage": name, "setting": label, "paper": paper_settings[label]}
                rows.append({**row, "this run": value})
    return rows


def _benchmarks(run: Run):
    ours = benchmark_table(run)
    paper = paper_commonsense()
    return figures.benchmarks_vs_paper(ours, paper[paper["task"].isin(ours["task"])])


FIGURES = {
    "loss": lambda run: figures.loss_curves(run.metrics),
    "bits_per_byte": lambda run: figures.validation_bits_per_byte(run.validation),
    "stage_contributions": lambda run: figures.stage_contributions(stage_deltas(run)),
    "benchmarks": _benchmarks,
    "throughput": lambda run: figures.throughput(run.metrics),
}


def draw(run: Run, name: str) -> Path:
    """Draw one of FIGURES for a run into run_dir/figures/ (PNG + SVG); return the PNG."""
    if name not in FIGURES:
        raise ValueError(f"figure {name!r}: allowed: {', '.join(FIGURES)}")
    return figures.save_figure(FIGURES[name](run), run.run_dir / "figures" / name)[0]


def benchmark_scores(run: Run) -> pd.DataFrame:
    """Scores per task (rows) and evaluated stage (columns), with the metric and chance."""
    evals = run.evals
    if evals.empty:
        return pd.DataFrame()
    table = evals.pivot_table(index=["task", "metric", "chance"], columns="stage", values="value")
    return table.reset_index()


def data_table(run: Run) -> pd.DataFrame:
    """Documents, tokens, windows and bytes per source and split (from data/index.json)."""
    rows = [
        {
            "source": name,
            "domain": entry["domain"],
            "split": split,
            **{key: counts.get(key) for key in ("documents", "tokens", "windows", "bytes")},
        }
        for name, entry in run.data_index.get("sources", {}).items()
        for split, counts in entry.get("splits", {}).items()
    ]
    return pd.DataFrame(rows)


def provenance_table(run: Run) -> pd.DataFrame:
    """Code, packages and machine that produced the run (from manifest.json)."""
    manifest = run.manifest
    git = manifest.get("git", {})
    rows = {
        "run": manifest.get("run_id", run.run_dir.name),
        "pipeline": manifest.get("pipeline"),
        "git commit": f"{git.get('sha')}{' (uncommitted changes)' if git.get('dirty') else ''}",
        **{f"hardware: {k}": v for k, v in manifest.get("hardware", {}).items()},
        **{k: v for k, v in manifest.get("packages", {}).items() if v},
    }
    return pd.DataFrame({"value": [str(v) for v in rows.values()]}, index=list(rows))


def steps_table(run: Run) -> pd.DataFrame:
    """Each pipeline step's status and wall time."""
    steps = run.manifest.get("steps", {})
    return pd.DataFrame(
        [
            {"step": n, "status": r.get("status"), "seconds": r.get("seconds")}
            for n, r in steps.items()
        ]
    )


def deviation_table(run: Run) -> pd.DataFrame:
    """deviations() of the run's stages from the paper pipeline's, as a table."""
    rows = deviations(run.stages, paper_stage_configs())
    return pd.DataFrame(rows, columns=["stage", "setting", "paper", "this run"])


def render_report(run_dir: Path | str, *, notebook: Path = REPORT_NOTEBOOK) -> Path:
    """Execute the report notebook on a run and write run_dir/report.html; return its path."""
    import papermill

    run_dir = project_path(run_dir)
    if not (run_dir / "manifest.json").is_file() and not (run_dir / "stages").is_dir():
        raise ConfigError(f"{run_dir}: not a run folder (no manifest.json and no stages/)")
    executed = run_dir / "notebooks" / "report.ipynb"
    executed.parent.mkdir(parents=True, exist_ok=True)
    papermill.execute_notebook(
        str(notebook),
        str(executed),
        parameters={"run_dir": str(run_dir)},
        cwd=str(PROJECT_ROOT),
        kernel_name="python3",
        progress_bar=False,
    )
    return notebook_to_html(executed, run_dir / "report.html")


def notebook_to_html(executed: Path, html_path: Path) -> Path:
    """Render an executed notebook as HTML with inputs hidden and images embedded."""
    import nbformat
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(
        template_file=str(TEMPLATE),
        exclude_input=True,
        exclude_input_prompt=True,
        exclude_output_prompt=True,
        embed_images=True,
    )
    body, _ = exporter.from_notebook_node(nbformat.read(executed, as_version=4))
    write_atomic(html_path, body.encode("utf-8"))
    return html_path
