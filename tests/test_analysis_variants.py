"""tinylab.analysis.variants on a synthetic run: each counterfactual beside its original, per
domain and per task, with intervals and one sentence per pair; and the pipeline plan's pairing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _train_fixtures import stage_config

from tinylab.analysis.plan import pipeline_plan
from tinylab.analysis.runs import load_run
from tinylab.analysis.variants import (
    counterfactual_pairs,
    variant_effects,
    variant_summary,
    variant_table,
)
from tinylab.config.loader import dump_config
from tinylab.layout import RunLayout

PARENT = {"init_from": {"stage": "base"}, "mixture": {"prose": 1, "code": 1}}
CODE = [2.0, 2.1, 2.2, 2.3, 2.4, 2.5, 2.6, 2.7]  # the original's code bpb per held-out window
NOISE = [0.02, -0.02, 0.01, -0.01, 0.03, -0.03, 0.0, 0.0]  # around 0: within noise
ARC = [1.0] * 8 + [0.0] * 12  # the original's 20 arc_easy items


def write_stage(run: RunLayout, name: str, config: dict, code: list, english: list, arc: list):
    """A trained stage (resolved params, one train and one val record) with an evaluation: code
    and english bits per byte per window, arc_easy per item."""
    stage = run.stage(name)
    stage.root.mkdir(parents=True)
    stage.resolved.write_text(dump_config(stage_config(name=name, **config)))
    records = [{"kind": "train", "step": 1, "stage_step": 1, "tokens": 100, "loss": 3.0,
                "lr": 1e-3, "grad_norm": 1.0, "tokens_per_s": 10.0, "mfu": None},
               {"kind": "val", "step": 1, "tokens": 100,
                "domains": {"code": {"loss": 1.0, "bpb": 2.0, "windows": 8}}}]  # fmt: skip
    stage.metrics.write_text("".join(json.dumps(r) + "\n" for r in records))
    windows = {"code": code, "english": english}
    rows = [{"task": f"perplexity/{d}", "metric": "bits_per_byte", "value": sum(v) / len(v),
             "stderr": 0.1, "n": len(v)} for d, v in windows.items()]  # fmt: skip
    rows.append({"task": "arc_easy", "metric": "acc", "value": sum(arc) / len(arc)})
    samples = [{"task": f"perplexity/{d}", "window": f"{d}/{i}", "bits_per_byte": bpb}
               for d, values in windows.items() for i, bpb in enumerate(values)]  # fmt: skip
    samples += [{"task": "arc_easy", "subtask": "arc_easy", "doc_id": i, "acc": a}
                for i, a in enumerate(arc)]  # fmt: skip
    run.eval.mkdir(exist_ok=True)
    run.eval_json(name).write_text(json.dumps({"checkpoint": name, "results": rows}))
    run.eval_samples(name).write_text("".join(json.dumps(s) + "\n" for s in samples))


@pytest.fixture
def run(tmp_path: Path):
    """base; continual and its counterfactual continual-noramp (code bpb 0.3 lower in every
    window, english within noise, one arc_easy item more right); a counterfactual of a stage the
    run lacks (no pair)."""
    layout = RunLayout(tmp_path)
    english = [3.0 + 0.1 * i for i in range(8)]
    write_stage(layout, "base", {}, [3.0] * 8, english, [0.0] * 20)
    write_stage(layout, "continual", PARENT, CODE, english, ARC)
    noramp = {**PARENT, "counterfactual": {"of": "continual", "changes": "no ramp"}}
    better = [a + n for a, n in zip(english, NOISE, strict=True)]
    write_stage(layout, "continual-noramp", noramp, [b - 0.3 for b in CODE], better,
                [1.0] * 9 + [0.0] * 11)  # fmt: skip
    orphan = {**PARENT, "counterfactual": {"of": "cooldown", "changes": "not here"}}
    write_stage(layout, "cooldown-lrdecay", orphan, CODE, english, ARC)
    return load_run(tmp_path)


def test_each_counterfactual_is_paired_with_its_original(run) -> None:
    assert counterfactual_pairs(run) == [("continual-noramp", "continual", "no ramp")]


def test_variant_effects_per_domain_and_task_with_intervals(run) -> None:
    effects = variant_effects(run, resamples=2000).set_index("measure")
    assert list(effects.index) == ["code bpb", "english bpb", "arc_easy"]  # domains, then tasks
    assert set(effects["counterfactual"]) == {"continual-noramp"} and set(effects["n"]) == {8, 20}
    code = effects.loc["code bpb"]  # the same shift in every window: no width, real
    assert (code.effect, code.low, code.high) == pytest.approx((-0.3, -0.3, -0.3))
    assert code.real and code.kind == "domain" and code.better == "lower"
    assert code.original == pytest.approx(2.35) and code.variant == pytest.approx(2.05)
    english = effects.loc["english bpb"]
    assert english.low < 0 < english.high and not english.real
    arc = effects.loc["arc_easy"]  # one of 20 items flips: +0.05, and 0 stays inside
    assert arc.effect == pytest.approx(0.05) and arc.low == 0 and not arc.real
    table = variant_table(effects.reset_index())
    assert list(table["verdict"]) == ["beyond noise", "within noise", "within noise"]
    assert table.iloc[0]["difference [95% interval]"] == "-0.3 [-0.3, -0.3]"
    assert table.iloc[0]["measure"] == "code bpb (lower is better)"


def test_one_sentence_per_pair_says_what_is_real_and_what_is_noise(run) -> None:
    effects = variant_effects(run, resamples=2000)
    assert variant_summary(effects) == (
        "continual-noramp (no ramp) against continual: 1 of 3 differences is real (beyond noise: "
        "0 outside the 95% interval): code bpb -0.3 [-0.3, -0.3], better; the other 2 are within "
        "noise."
    )
    noise = effects[effects["measure"] != "code bpb"]
    sentence = variant_summary(noise)
    assert sentence.startswith("continual-noramp (no ramp) against continual: all 2 differences")
    assert "within noise (0 inside each 95% interval; the nearest to real, arc_easy +0.05" in (
        sentence
    )
    assert variant_summary(effects.iloc[:0]).startswith("This run has no counterfactual stage")


def test_the_plan_names_what_each_counterfactual_is_of() -> None:
    plan = pipeline_plan("params/pipelines/demo.yaml").set_index("step")
    assert plan.loc["continual-mathcode-noramp", "counterfactual_of"] == "continual-mathcode"
    assert plan.loc["cooldown-mathcode-lrdecay", "counterfactual_of"] == "cooldown-mathcode"
    assert plan.loc["cooldown-mathcode-lrdecay", "lr_cooldown"] == "linear"
    assert plan.loc["cooldown-mathcode", ["counterfactual_of", "lr_cooldown"]].tolist() == ["", ""]
    lr, batch = plan.loc["cooldown-mathcode-lrdecay"], plan.loc["cooldown-mathcode"]
    assert (lr["tokens"], lr["schedule_end"]) == (batch["tokens"], batch["schedule_end"])
