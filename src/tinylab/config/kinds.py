"""The kinds of params files: each folder under params/ and the schema its files follow, for the
callers that load a file of any kind (`tinylab params check`, a pipeline's step params).

    load_params("params/eval/demo.yaml")     # an EvalConfig: params/eval/ holds EvalConfigs
"""

from __future__ import annotations

from pathlib import Path

from tinylab.config.cluster import ClusterConfig
from tinylab.config.data import DataConfig
from tinylab.config.eval import EvalConfig
from tinylab.config.hardware import HardwareConfig
from tinylab.config.loader import ConfigError, Overrides, Schema, load_config
from tinylab.config.model import ModelConfig
from tinylab.config.paper import PaperFacts
from tinylab.config.pipeline import PipelineConfig
from tinylab.config.stage import StageConfig

SCHEMAS: dict[str, type[Schema]] = {
    str(schema.params_kind): schema
    for schema in (
        ModelConfig,
        DataConfig,
        StageConfig,
        PipelineConfig,
        EvalConfig,
        ClusterConfig,
        PaperFacts,
        HardwareConfig,
    )
}


def kind_of(path: Path | str) -> str:
    """The params kind of a file, from the folder it sits in under params/."""
    for part in reversed(Path(path).resolve().parts[:-1]):
        if part in SCHEMAS:
            return part
    raise ConfigError(
        f"{path}: cannot tell what kind of params file this is; put it under params/<kind>/ "
        f"with kind one of {sorted(SCHEMAS)}, or pass --kind"
    )


def load_params(path: Path | str, *, overrides: Overrides = ()) -> Schema:
    """Load a params file of any kind, with the schema of the folder it sits in."""
    return load_config(path, SCHEMAS[kind_of(path)], overrides=overrides)
