"""tinylab.config: every params file in the repo loads, and bad input gets one clear message
(the loader's own rules: tests/test_config_loader.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tinylab.config.kinds import load_params
from tinylab.config.loader import (
    PARAMS_DIR,
    ConfigError,
    apply_overrides,
    dump_config,
    load_config,
    parse_yaml,
)
from tinylab.config.model import ModelConfig
from tinylab.config.stage import StageConfig, check_counterfactuals

ALL_PARAMS = sorted(PARAMS_DIR.rglob("*.yaml"))


@pytest.mark.parametrize("path", ALL_PARAMS, ids=lambda p: str(p.relative_to(PARAMS_DIR)))
def test_every_params_file_in_the_repo_is_valid(path: Path) -> None:
    load_params(path)


def test_repo_has_params_of_every_kind() -> None:
    kinds = {p.relative_to(PARAMS_DIR).parts[0] for p in ALL_PARAMS}
    assert {"models", "data", "stages"} <= kinds


def test_yaml_traps_are_fixed() -> None:
    data = parse_yaml("a: 1e-4\nb: 1.5e12\nc: no\nd: on\ne: true\nf: 1_000\ng: 3.0e-4\n")
    assert data == {"a": 1e-4, "b": 1.5e12, "c": "no", "d": "on", "e": True, "f": 1000, "g": 3e-4}


def test_extends_merges_mappings_and_replaces_the_rest(params: Path) -> None:
    stage = load_params(params / "stages" / "child.yaml")
    assert stage.optim.lr == pytest.approx(1e-3)  # overridden
    assert stage.optim.min_lr == pytest.approx(1e-4)  # inherited inside a merged mapping
    assert stage.mixture == {"prose": 1.0}


def test_references_resolve_to_presets_and_paths(params: Path) -> None:
    stage = load_params(params / "stages" / "base.yaml")
    assert isinstance(stage.model, ModelConfig)
    assert stage.model.hidden_size == 64
    assert stage.data.seq_len == 32
    assert stage.micro_steps_per_step == 4


def test_overrides_apply_with_yaml_values(params: Path) -> None:
    stage = load_params(
        params / "stages" / "base.yaml",
        overrides=["optim.lr=3e-4", "optim.betas=[0.8, 0.9]", "model.num_hidden_layers=3"],
    )
    assert stage.optim.lr == pytest.approx(3e-4)
    assert stage.optim.betas == (0.8, 0.9)
    assert stage.model.num_hidden_layers == 3


def test_overrides_do_not_mutate_input() -> None:
    data = {"optim": {"lr": 1.0}}
    apply_overrides(data, ["optim.lr=2"], StageConfig)
    assert data == {"optim": {"lr": 1.0}}


def test_an_override_inside_a_shorthand_keeps_its_type() -> None:
    data = apply_overrides({"adapter": "lora"}, ["adapter.rank=8"], StageConfig)
    assert data == {"adapter": {"type": "lora", "rank": 8}}


def test_an_override_inside_a_value_that_is_no_mapping_names_it() -> None:
    with pytest.raises(ConfigError, match=r"--set optim.lr.x: 'lr' holds 1.0, not a mapping"):
        apply_overrides({"optim": {"lr": 1.0}}, ["optim.lr.x=2"], StageConfig)


def test_an_override_inside_another_string_names_it(params: Path) -> None:
    with pytest.raises(ConfigError, match=r"--set name.x: 'name' holds 'base', not a mapping"):
        load_params(params / "stages" / "base.yaml", overrides=["name.x=1"])


def test_resolved_config_round_trips(params: Path, tmp_path: Path) -> None:
    stage = load_params(params / "stages" / "base.yaml")
    out = tmp_path / "stages" / "resolved.yaml"
    out.parent.mkdir()
    out.write_text(dump_config(stage))
    assert load_params(out) == stage


# ---------------------------------------------------------------------------------------------
# Bad input: each case is (file name, text, pieces the message must contain).

BAD_STAGES = [
    ("unknown_key", "lr: 0.1\n", ["lr", "unknown key", "allowed keys"]),
    ("wrong_type", "micro_batch_size: many\n", ["micro_batch_size", "'many'", "integer"]),
    ("negative_lr", "optim: {lr: -1e-3, min_lr: 0}\n", ["optim.lr", "-0.001", "greater than 0"]),
    ("zero_lr", "optim: {lr: 0, min_lr: 0}\n", ["optim.lr", "greater than 0"]),
    ("min_above_peak", "optim: {lr: 1e-3, min_lr: 1e-2}\n", ["optim.min_lr", "must not exceed lr"]),
    (
        "batch_not_divisible",
        "global_batch_tokens: 1000\n",
        ["global_batch_tokens", "1000", "multiple of"],
    ),
    ("unknown_source", "mixture: {poetry: 1}\n", ["mixture", "unknown source", "poetry"]),
    ("negative_weight", "mixture: {prose: -1}\n", ["mixture.prose", "greater than or equal to 0"]),
    ("all_zero_weights", "mixture: {prose: 0}\n", ["mixture", "must not all be zero"]),
    (
        "ramp_too_long",
        "ramp: {tokens: 999999999, start: {prose: 1}}\n",
        ["ramp.tokens", "exceeds max_tokens"],
    ),
    ("bad_literal", "parallel: {precision: fp4}\n", ["parallel.precision", "'fp4'", "'fp8'"]),
    ("bad_betas", "optim: {lr: 1e-3, min_lr: 0, betas: [0.9, 1.5]}\n", ["optim.betas", "[0, 1)"]),
    (
        "bad_carry",
        "init_from: {stage: base, carry: [gradients]}\n",
        ["init_from.carry", "gradients"],
    ),
    (
        "warmup_past_decay",
        "schedule: {warmup_tokens: 100, decay_tokens: 50}\n",
        ["schedule.decay_tokens", "must exceed"],
    ),
    ("missing_reference", "model: no-such-preset\n", ["model = 'no-such-preset'", "not found"]),
    ("missing_extends", "extends: nowhere.yaml\n", ["extends", "nowhere.yaml", "not found"]),
]


@pytest.mark.parametrize(("name", "text", "pieces"), BAD_STAGES, ids=[c[0] for c in BAD_STAGES])
def test_bad_stage_gives_one_clear_error(
    params: Path, name: str, text: str, pieces: list[str]
) -> None:
    path = params / "stages" / f"{name}.yaml"
    path.write_text(text if text.startswith("extends") else "extends: base.yaml\n" + text)
    with pytest.raises(ConfigError) as err:
        load_params(path)
    message = str(err.value)
    assert str(path) in message
    for piece in pieces:
        assert piece in message, f"{piece!r} not in {message!r}"


def test_seq_len_past_the_model_context_is_rejected(params: Path) -> None:
    path = params / "stages" / "long.yaml"
    path.write_text("extends: base.yaml\n")
    with pytest.raises(ConfigError, match="exceeds model.max_position_embeddings"):
        load_params(
            path, overrides=["data.seq_len=128", "global_batch_tokens=512", "micro_batch_size=4"]
        )


@pytest.mark.parametrize(
    ("text", "pieces"),
    [
        ("", ["file is empty"]),
        ("# only a comment\n", ["file is empty"]),
        ("a: [1, 2\n", ["malformed YAML"]),
        ("- 1\n- 2\n", ["expected a mapping", "list"]),
        ("hidden_size: 1\nhidden_size: 2\n", ["duplicate key 'hidden_size'"]),
        ("just a string\n", ["expected a mapping", "str"]),
    ],
    ids=["empty", "comment_only", "malformed", "list_at_top", "duplicate_key", "scalar_at_top"],
)
def test_unreadable_files(params: Path, text: str, pieces: list[str]) -> None:
    path = params / "models" / "broken.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_params(path)
    assert str(path) in str(err.value)
    for piece in pieces:
        assert piece in str(err.value)


def test_extends_cycle_is_reported(params: Path) -> None:
    (params / "models" / "a.yaml").write_text("extends: b.yaml\n")
    (params / "models" / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_params(params / "models" / "a.yaml")


def test_model_heads_must_divide(params: Path) -> None:
    path = params / "models" / "odd.yaml"
    path.write_text("extends: small.yaml\nnum_key_value_heads: 3\n")
    with pytest.raises(
        ConfigError, match=r"num_key_value_heads = 3: must divide num_attention_heads \(4\)"
    ):
        load_params(path)


def test_missing_required_key_is_named(params: Path) -> None:
    path = params / "models" / "partial.yaml"
    path.write_text("vocab_size: 100\n")
    with pytest.raises(ConfigError, match="hidden_size: required key is missing"):
        load_params(path)


def test_unknown_source_kind(params: Path) -> None:
    path = params / "data" / "weird.yaml"
    path.write_text("extends: small.yaml\nsources: {prose: {kind: ftp, domain: x}}\n")
    with pytest.raises(ConfigError, match="'ftp'"):
        load_params(path)


def test_tokenizer_kind_needs_its_fields(params: Path) -> None:
    path = params / "data" / "tok.yaml"
    path.write_text("extends: small.yaml\ntokenizer: {kind: hub}\n")
    with pytest.raises(ConfigError, match="needs name_or_path"):
        load_params(path)


def test_bad_override_syntax(params: Path) -> None:
    with pytest.raises(ConfigError, match="expected key.path=value"):
        load_params(params / "stages" / "base.yaml", overrides=["optim.lr"])


def test_override_of_unknown_key_names_the_override(params: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_params(params / "stages" / "base.yaml", overrides=["optim.learning_rate=1"])
    assert "--set optim.learning_rate=1" in str(err.value)
    assert "optim.learning_rate: unknown key" in str(err.value)


def test_file_outside_params_needs_a_kind(tmp_path: Path) -> None:
    path = tmp_path / "loose.yaml"
    path.write_text("a: 1\n")
    with pytest.raises(ConfigError, match="cannot tell what kind"):
        load_params(path)
    with pytest.raises(ConfigError, match="a: unknown key"):
        load_config(path, ModelConfig)


def test_pipeline_steps_must_form_a_dag(params: Path) -> None:
    path = params / "pipelines" / "p.yaml"
    path.write_text(
        "name: p\nsteps:\n  - {name: a, notebook: x, after: [b]}\n  - {name: b, notebook: y}\n"
    )
    with pytest.raises(ConfigError, match="not earlier steps"):
        load_params(path)


def test_stage_schema_direct_use_rejects_extra() -> None:
    with pytest.raises(Exception, match="extra"):
        StageConfig.model_validate({"name": "x", "bogus": 1})


def test_unknown_nested_key_lists_the_allowed_keys_of_its_section(params: Path) -> None:
    path = params / "stages" / "nested.yaml"
    path.write_text("extends: base.yaml\nramp: {tokens: 10, start: {prose: 1}, shape: cosine}\n")
    with pytest.raises(ConfigError, match=r"ramp.shape: unknown key; allowed keys: tokens, start"):
        load_params(path)


# ---------------------------------------------------------------------------------------------
# params/paper/: the paper's facts (tinylab.config.paper)

FACTS = PARAMS_DIR / "paper" / "tinyllama-v1.1.yaml"
BLOCK = "{section: Model (exact), cites: paper, status: stated, facts: {model.hidden_size: 2048}}"


def _facts(tmp_path: Path, training: str, stages: str = "") -> Path:
    stages = stages or (
        "[{section: s, cites: c, status: stated, stages: [base], facts: {max_tokens: 1}}]"
    )
    path = tmp_path / "paper" / "facts.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(f"name: p\ntraining: {training}\nstages: {stages}\n")
    return path


def test_every_paper_fact_cites_a_section_of_docs_paper_md() -> None:
    headings = [
        line.lstrip("#").strip()
        for line in (PARAMS_DIR.parent / "docs" / "PAPER.md").read_text().splitlines()
        if line.startswith("## ")
    ]
    facts = load_params(FACTS)
    blocks = [*facts.training, *facts.stages]
    blocks += [block for group in facts.evaluation.values() for block in group.facts]
    missing = {b.section for b in blocks if not any(h.startswith(b.section) for h in headings)}
    assert not missing, f"sections docs/PAPER.md lacks: {missing}"


@pytest.mark.parametrize(
    ("training", "stages", "pieces"),
    [
        (BLOCK.replace("stated", "assumed"), "", ["training.0", "an assumed block needs `why`"]),
        (
            BLOCK.replace("model.hidden_size", "model.width"),
            "",
            ["unknown fact name", "model.width"],
        ),
        (f"[{BLOCK}, {BLOCK}]", "", ["model.hidden_size", "more than one block"]),
        (BLOCK.replace("stated", "rumoured"), "", ["training.0.status", "'stated' or 'assumed'"]),
        (
            f"[{BLOCK}]",
            "[{section: s, cites: c, status: stated, stages: [b], facts: {init_from.stage: a}}]",
            ["init_from.stage = 'a' is not a stage"],
        ),
    ],
    ids=["assumed_without_why", "unknown_name", "twice", "bad_status", "unknown_parent"],
)
def test_bad_paper_facts_give_one_clear_error(
    tmp_path: Path, training: str, stages: str, pieces: list[str]
) -> None:
    training = training if training.startswith("[") else f"[{training}]"
    path = _facts(tmp_path, training, stages)
    with pytest.raises(ConfigError) as err:
        load_params(path)
    assert str(path) in str(err.value)
    for piece in pieces:
        assert piece in str(err.value), f"{piece!r} not in {err.value}"


def test_the_v1_1_batch_is_about_1_8m_and_divides_over_the_usual_gpu_counts() -> None:
    for name, tokens, gpus in (("base", 1.8e6, (1, 2, 4, 8)), ("cooldown-mathcode", 7.2e6, (16,))):
        stage = load_params(PARAMS_DIR / "stages" / "tinyllama-v1.1" / f"{name}.yaml")
        assert abs(stage.global_batch_tokens / tokens - 1) < 0.02
        for world in gpus:
            assert stage.global_batch_tokens % (stage.micro_batch_size * 2048 * world) == 0
    base = load_params(PARAMS_DIR / "stages" / "tinyllama-v1.1" / "base.yaml")
    assert base.schedule.warmup_tokens == 2000 * base.global_batch_tokens
    assert base.global_batch_tokens % (8 * 2048 * 16) == 0  # 16 GPUs at micro-batch 8


# -- counterfactual stages (issue 22) -------------------------------------------------------


def _pipeline_stages(pipeline: str) -> dict[str, StageConfig]:
    """A pipeline's stages by params file."""
    steps = load_params(PARAMS_DIR / "pipelines" / f"{pipeline}.yaml").steps
    files = [s.params["stage_params"] for s in steps if "stage_params" in s.params]
    return {path: load_params(PARAMS_DIR.parent / path) for path in files}


@pytest.mark.parametrize("pipeline", ["demo", "tinyllama-v1.1"])
def test_each_counterfactual_differs_from_its_original_only_by_its_declared_change(
    pipeline: str,
) -> None:
    stages = {s.name: s for s in _pipeline_stages(pipeline).values()}
    check_counterfactuals(_pipeline_stages(pipeline), pipeline=pipeline)
    pairs = {n: s.counterfactual.of for n, s in stages.items() if s.counterfactual}
    assert pairs == {
        "continual-mathcode-noramp": "continual-mathcode",
        "cooldown-mathcode-lrdecay": "cooldown-mathcode",
    }
    ours, theirs = (
        {name: stages[name].model_dump() for name in names} for names in (pairs, pairs.values())
    )
    diff = {
        name: {k for k in ours[name] if ours[name][k] != theirs[of].get(k)}
        for name, of in pairs.items()
    }
    assert diff["continual-mathcode-noramp"] == {"name", "ramp", "counterfactual"}
    lr = diff["cooldown-mathcode-lrdecay"]
    assert {"global_batch_tokens", "schedule"} <= lr <= {
        "name", "global_batch_tokens", "schedule", "validation", "checkpoint", "counterfactual"
    }  # fmt: skip
    cooled, batched = stages["cooldown-mathcode-lrdecay"], stages["cooldown-mathcode"]
    assert cooled.schedule.model_copy(update={"cooldown": None}) == batched.schedule
    assert batched.global_batch_tokens == 4 * cooled.global_batch_tokens  # docs/PAPER.md, 4x
    # validation at the same tokens in both
    for key in ("validation", "checkpoint"):
        every = [getattr(s, key).every_steps * s.global_batch_tokens for s in (cooled, batched)]
        assert every[0] == every[1] or key == "checkpoint" and pipeline == "demo"


def test_a_stage_without_the_new_fields_dumps_as_before() -> None:
    """schedule.cooldown and counterfactual are left out when null, so the resolved params (and
    the fingerprints and checkpoint recipes made of them) of every other stage stay the same."""
    base = load_params(PARAMS_DIR / "stages" / "demo" / "base.yaml")
    dumped = parse_yaml(dump_config(base))
    assert "counterfactual" not in dumped and "cooldown" not in dumped["schedule"]
    cooled = load_params(PARAMS_DIR / "stages" / "demo" / "cooldown-mathcode-lrdecay.yaml")
    again = StageConfig.model_validate(parse_yaml(dump_config(cooled)))
    assert again == cooled and again.schedule.cooldown == "linear"


def test_a_stage_cannot_be_its_own_counterfactual(params: Path) -> None:
    path = params / "stages" / "self.yaml"
    path.write_text("extends: base.yaml\nname: x\ncounterfactual: {of: x, changes: nothing}\n")
    with pytest.raises(ConfigError, match="counterfactual.of = 'x': a stage cannot be its own"):
        load_params(path)


def test_a_counterfactual_starts_and_trains_as_its_original(params: Path) -> None:
    child = load_params(params / "stages" / "child.yaml")
    twin = {"of": "child", "changes": "another start"}

    def check(**changes: object) -> None:
        stage = {**child.model_dump(), "name": "twin", "counterfactual": twin, **changes}
        stages = {"child.yaml": child, "twin.yaml": StageConfig.model_validate(stage)}
        check_counterfactuals(stages, pipeline="p")

    with pytest.raises(ConfigError, match=r"^twin.yaml: init_from = None, but 'child' "):
        check(init_from=None)
    with pytest.raises(ConfigError, match=r"max_tokens = 1024, but 'child' .* has 65536: a "):
        check(max_tokens=1024)
    check(optim={"lr": 2e-3, "min_lr": 1e-4})  # any other change is the counterfactual's own
