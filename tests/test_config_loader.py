"""tinylab.config.loader: extends, references (each file read once, at any depth), overrides
applied before validation (shorthands expanded by their schema, no special cases), and errors
that name the file, key and value. Schema rules: tests/test_config.py."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from pydantic import model_validator

from tinylab.config import loader
from tinylab.config.loader import (
    ConfigError,
    Schema,
    apply_overrides,
    load_config,
    load_raw,
    override_config,
)
from tinylab.config.model import ModelConfig
from tinylab.config.stage import StageConfig

LORA_STAGE = "extends: base.yaml\nname: lora\ninit_from: {stage: base, carry: [weights]}\n"


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> Counter:
    """How often each params file is read from disk."""
    counts: Counter = Counter()
    read = loader._read_mapping

    def counting(path: Path) -> dict:
        counts[path.name] += 1
        return read(path)

    monkeypatch.setattr(loader, "_read_mapping", counting)
    return counts


def test_each_referenced_file_is_read_once(params: Path, reads: Counter) -> None:
    load_config(params / "stages" / "child.yaml", StageConfig)
    assert reads == {"child.yaml": 1, "base.yaml": 1, "small.yaml": 2}  # models/ and data/


def test_an_override_inside_a_reference_reads_it_once(params: Path, reads: Counter) -> None:
    stage = load_config(
        params / "stages" / "base.yaml", StageConfig, overrides=["model.num_hidden_layers=3"]
    )
    assert stage.model.num_hidden_layers == 3
    assert stage.model.hidden_size == 64  # the rest of the referenced file
    assert reads == {"base.yaml": 1, "small.yaml": 2}


def test_a_reference_in_a_parent_is_relative_to_the_parent(params: Path) -> None:
    (params / "stages" / "deep").mkdir()
    (params / "stages" / "deep" / "grandchild.yaml").write_text(
        "extends: ../child.yaml\nname: grandchild\n"
    )
    stage = load_config(params / "stages" / "deep" / "grandchild.yaml", StageConfig)
    assert (stage.name, stage.data.seq_len, stage.init_from.stage) == ("grandchild", 32, "base")
    raw = load_raw(params / "stages" / "deep" / "grandchild.yaml", StageConfig)
    assert raw["data"] == str(params / "data" / "small.yaml")
    assert raw["model"] == str(params / "models" / "small.yaml")


def test_an_override_can_replace_a_reference(params: Path) -> None:
    (params / "models" / "wide.yaml").write_text("extends: small.yaml\nhidden_size: 128\n")
    stage = load_config(params / "stages" / "base.yaml", StageConfig, overrides=["model=wide"])
    assert stage.model.hidden_size == 128
    with pytest.raises(ConfigError, match=r"model = 'nope': referenced file not found"):
        load_config(params / "stages" / "base.yaml", StageConfig, overrides=["model=nope"])


def test_an_error_in_a_referenced_file_names_that_file(params: Path) -> None:
    (params / "models" / "small.yaml").write_text(
        (params / "models" / "small.yaml").read_text() + "rope_theta: -1\n"
    )
    with pytest.raises(ConfigError) as err:
        load_config(params / "stages" / "base.yaml", StageConfig)
    assert str(params / "models" / "small.yaml") in str(err.value)
    assert "rope_theta = -1" in str(err.value)


def test_a_missing_reference_in_a_parent_names_the_parent(params: Path) -> None:
    (params / "stages" / "base.yaml").write_text(
        (params / "stages" / "base.yaml").read_text().replace("model: small", "model: gone")
    )
    with pytest.raises(ConfigError) as err:
        load_config(params / "stages" / "child.yaml", StageConfig)
    assert f"{params / 'stages' / 'base.yaml'}: model = 'gone'" in str(err.value)


def test_adapter_shorthand_takes_overrides(params: Path) -> None:
    path = params / "stages" / "lora.yaml"
    path.write_text(LORA_STAGE + "adapter: lora\n")
    stage = load_config(path, StageConfig, overrides=["adapter.rank=8"])
    assert (stage.adapter.type, stage.adapter.rank, stage.adapter.alpha) == ("lora", 8, 32.0)
    assert load_config(path, StageConfig).adapter == stage.adapter.model_copy(update={"rank": 16})


def test_a_bad_shorthand_under_an_override_names_key_and_value(params: Path) -> None:
    path = params / "stages" / "qlora.yaml"
    path.write_text(LORA_STAGE + "adapter: qlora\n")
    expected = r"--set adapter.rank: adapter = 'qlora': expected 'lora'"
    with pytest.raises(ConfigError, match=expected):
        load_config(path, StageConfig, overrides=["adapter.rank=8"])


class Engine(Schema):
    """A test schema with a shorthand of its own: `engine: fast` = {speed: 10}."""

    speed: int = 1
    size: int = 1

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"speed": 10} if value == "fast" else value


class Car(Schema):
    name: str = "car"
    engine: Engine | None = None
    spare: dict[str, Engine] = {}
    model: ModelConfig | None = None


def test_any_schema_shorthand_takes_overrides_by_the_same_rule() -> None:
    data = apply_overrides({"engine": "fast"}, ["engine.size=3"], Car)
    assert data == {"engine": {"speed": 10, "size": 3}}
    data = apply_overrides({"spare": {"a": "fast"}}, ["spare.a.size=2"], Car)
    assert data == {"spare": {"a": {"speed": 10, "size": 2}}}
    assert Car.model_validate(data).spare["a"] == Engine(speed=10, size=2)


def test_an_override_inside_a_value_without_a_schema_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"--set name.x: 'name' holds 'car', not a mapping"):
        apply_overrides({"name": "car"}, ["name.x=1"], Car)


def test_references_resolve_at_any_depth(params: Path) -> None:
    class Garage(Schema):
        params_kind = "garages"
        car: Car

    path = params / "garages" / "g.yaml"
    path.parent.mkdir()
    path.write_text("car: {model: small, engine: fast}\n")
    garage = load_config(path, Garage, overrides=["car.model.num_hidden_layers=5"])
    assert garage.car.model.hidden_size == 64 and garage.car.model.num_hidden_layers == 5
    assert garage.car.engine == Engine(speed=10)


def test_override_config_validates_a_loaded_config(params: Path) -> None:
    stage = load_config(params / "stages" / "base.yaml", StageConfig)
    changed = override_config(stage, ["optim.lr=5e-4", "model.num_hidden_layers=1"], source="s")
    assert (changed.optim.lr, changed.model.num_hidden_layers) == (5e-4, 1)
    assert override_config(stage, [], source="s") is stage
    with pytest.raises(ConfigError, match=r"^s with --set optim.lr=-1: 1 invalid value"):
        override_config(stage, ["optim.lr=-1"], source="s")


def test_overrides_apply_before_validation(params: Path) -> None:
    """A file that is invalid alone loads when an override fixes it (and not otherwise)."""
    path = params / "stages" / "unfinished.yaml"
    path.write_text("extends: base.yaml\nmicro_batch_size: 3\n")
    with pytest.raises(ConfigError, match="global_batch_tokens = 256: must be a multiple"):
        load_config(path, StageConfig)
    stage = load_config(path, StageConfig, overrides=["global_batch_tokens=384"])
    assert stage.micro_steps_per_step == 4
