"""Loading params files: YAML, `extends:`, references, `--set` overrides, validation, errors.

The loader knows no schema; the schema it is given says what it needs. A field whose schema has
a `params_kind` (ModelConfig: "models") holds a reference to another params file: a name under
params/<kind>/ or a .yaml path relative to the file that wrote it. Loading a file:

1. reads YAML with a loader that fixes YAML 1.1 traps (`1e-4` and `1.5e12` are floats, `yes`/`no`/
   `on`/`off` stay strings, duplicate keys are errors);
2. merges the chain of `extends:` parents (mappings merge key by key, everything else replaces);
   references become absolute paths, resolved against the file that wrote them;
3. applies dotted overrides (`optim.lr=3e-4`, the syntax of the CLI's `--set` and of papermill) to
   the data, before validation. An override inside a value that is no mapping first expands that
   value by its field's schema: a reference into the referenced file's data, a shorthand
   (`adapter: lora`) into the keys its schema's own `mode="before"` validator sets;
4. replaces the remaining references by the referenced files' data (each file read once, and
   valid on its own);
5. validates, turning any failure into one `ConfigError` naming the file, key path, value and
   what is allowed.

    stage = load_config("params/stages/demo/base.yaml", StageConfig, overrides=["optim.lr=1e-3"])
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar, TypeVar, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from tinylab.errors import UserError

PROJECT_ROOT = Path(__file__).resolve().parents[3]
PARAMS_DIR = PROJECT_ROOT / "params"


def project_path(path: str | Path) -> Path:
    """A path from params or notebook parameters: relative ones are relative to the project root,
    so notebooks behave the same whether the kernel runs in the root or in notebooks/."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else PROJECT_ROOT / path


class ConfigError(UserError):
    """A params file (or override) is invalid; the message names file, key, value and rule."""


class Schema(BaseModel):
    """Base of every params schema: unknown keys are errors, assignments are validated. A schema
    with a `params_kind` is a kind of params file (its folder under params/), and a field of that
    schema holds a reference to such a file."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
    params_kind: ClassVar[str | None] = None


S = TypeVar("S", bound=Schema)
Overrides = Sequence[str]

# Where a reference given by --set on an already loaded config is resolved from: the project.
_OVERRIDE_REFERRER = PROJECT_ROOT / "--set"


# --------------------------------------------------------------------------------------------
# YAML


class _Loader(yaml.SafeLoader):
    """SafeLoader without YAML 1.1's traps: see the module docstring."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def _construct_mapping(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> dict:
    mapping: dict = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in mapping:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        mapping[key] = loader.construct_object(value_node, deep=deep)
    return mapping


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def parse_yaml(text: str, *, source: str = "<string>") -> Any:
    """Parse YAML text with tinylab's loader; raise ConfigError on malformed input."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader derives from SafeLoader
    except yaml.YAMLError as err:
        raise ConfigError(f"{source}: malformed YAML: {err}") from None


def _read_mapping(path: Path) -> dict[str, Any]:
    """One YAML file that must hold a non-empty mapping."""
    if path.is_dir():
        raise ConfigError(f"{path}: is a folder; give a params .yaml file inside it")
    if not path.is_file():
        raise ConfigError(f"{path}: file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"{path}: not a text file (byte {err.start} is not UTF-8); a params file is YAML text"
        ) from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot be read ({err.strerror})") from None
    data = parse_yaml(text, source=str(path))
    if data is None:
        raise ConfigError(f"{path}: file is empty; expected a mapping of params")
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: expected a mapping of params at the top, got {type(data).__name__}"
        )
    return data


def dump_config(config: Schema) -> str:
    """The resolved config as YAML (what `params show` prints and runs save)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


# --------------------------------------------------------------------------------------------
# Loading


def load_config(path: Path | str, schema: type[S], *, overrides: Overrides = ()) -> S:
    """Load, merge, override, resolve and validate one params file."""
    path = Path(path)
    data = load_raw(path, schema)
    source = str(path)
    if overrides:
        data = apply_overrides(data, overrides, schema, referrer=path.resolve())
        source += " (with --set " + " ".join(overrides) + ")"
    data = _resolve_references(data, schema, referrer=path.resolve(), where=source)
    return _validate(data, schema, source)


def override_config(config: S, overrides: Overrides, *, source: str) -> S:
    """A loaded config with dotted overrides applied and validated again; `source` names it in
    errors."""
    if not overrides:
        return config
    schema = type(config)
    data = apply_overrides(config.model_dump(mode="json"), overrides, schema)
    where = f"{source} with --set {' '.join(overrides)}"
    data = _resolve_references(data, schema, referrer=_OVERRIDE_REFERRER, where=where)
    return _validate(data, schema, where)


def load_raw(path: Path | str, schema: type[Schema], *, _chain: tuple[Path, ...] = ()) -> dict:
    """A params file's data with its `extends:` chain merged, not validated; references are
    absolute paths, resolved against the file that wrote them."""
    path = Path(path).resolve()
    if path in _chain:
        cycle = " -> ".join(str(p) for p in (*_chain, path))
        raise ConfigError(f"{_chain[-1]}: extends: cycle: {cycle}")

    def absolute(key: str, value: str, target: type[Schema]) -> str:
        return str(_reference_path(value, target, referrer=path, where=f"{path}: {key}"))

    data = _map_references(_read_mapping(path), schema, absolute)
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise ConfigError(f"{path}: extends = {parent!r}: must be a path to a .yaml file")
    parent_path = (path.parent / parent).resolve()
    if not parent_path.is_file():
        raise ConfigError(f"{path}: extends = {parent!r}: file not found ({parent_path})")
    return deep_merge(load_raw(parent_path, schema, _chain=(*_chain, path)), data)


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Merge `update` into a copy of `base`: mappings key by key, all else replaced."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def parse_overrides(overrides: Overrides) -> list[tuple[str, Any]]:
    """Parse `key.path=value` strings; values are YAML (`3e-4`, `[0.9, 0.95]`, `true`)."""
    parsed = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"--set {item!r}: expected key.path=value, e.g. optim.lr=3e-4")
        parsed.append((key, parse_yaml(raw, source=f"--set {item!r}")))
    return parsed


def apply_overrides(
    data: dict[str, Any],
    overrides: Overrides,
    schema: type[Schema],
    *,
    referrer: Path = _OVERRIDE_REFERRER,
) -> dict[str, Any]:
    """A copy of `data` (of `schema`, not yet validated) with dotted overrides applied. A key
    that passes through a value that is no mapping expands it first (`_expand`); a reference in
    it is resolved as if `referrer`, the file the data came from, held it."""
    result = copy.deepcopy(data)
    for key, value in parse_overrides(overrides):
        node: dict[str, Any] = result
        annotation: Any = schema
        *parents, leaf = key.split(".")
        for part in parents:
            annotation = _child_annotation(annotation, part)
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                child = node[part] = _expand(child, annotation, key, part, referrer)
            node = child
        node[leaf] = value
    return result


def _expand(value: Any, annotation: Any, key: str, part: str, referrer: Path) -> dict[str, Any]:
    """A value that is no mapping, as the mapping its field's schema makes of it: a reference
    as the referenced file's data; anything else as validated by the schema (its own
    `mode="before"` validators expand shorthands) and dumped with the keys it set."""
    target = _schema_in(annotation)
    if target is not None and target.params_kind and isinstance(value, str):
        return _load_reference(value, target, referrer=referrer, where=f"--set {key}: {part}")
    if target is not None:
        try:
            expanded = TypeAdapter(annotation).validate_python(value)
        except ValidationError as err:
            message = err.errors()[0]["msg"].removeprefix("Value error, ")
            raise ConfigError(f"--set {key}: {part} = {_short(value)}: {message}") from None
        if isinstance(expanded, BaseModel):
            return expanded.model_dump(exclude_unset=True)
    raise ConfigError(f"--set {key}: {part!r} holds {value!r}, not a mapping")


# --------------------------------------------------------------------------------------------
# References


def _map_references(
    data: dict[str, Any], schema: type[Schema], fn: Callable[[str, str, type[Schema]], Any]
) -> dict[str, Any]:
    """`data` with `fn(key, value, target schema)` applied to each string that a reference field
    holds, at any depth of nested schemas."""

    def walk(node: dict[str, Any], annotation: Any, prefix: str) -> dict[str, Any]:
        result = dict(node)
        for name, value in node.items():
            child = _child_annotation(annotation, str(name))
            target = _schema_in(child)
            if target is None:
                continue
            if isinstance(value, str) and target.params_kind:
                result[name] = fn(f"{prefix}{name}", value, target)
            elif isinstance(value, dict):
                result[name] = walk(value, child, f"{prefix}{name}.")
        return result

    return walk(data, schema, "")


def _resolve_references(
    data: dict[str, Any], schema: type[Schema], *, referrer: Path, where: str
) -> dict[str, Any]:
    """`data` with every reference replaced by the referenced file's data."""
    return _map_references(
        data,
        schema,
        lambda key, value, target: _load_reference(
            value, target, referrer=referrer, where=f"{where}: {key}"
        ),
    )


def _load_reference(value: str, target: type[Schema], *, referrer: Path, where: str) -> dict:
    """The data of a referenced file, read once, its own references resolved, and checked to be
    valid on its own (so its errors name it)."""
    path = _reference_path(value, target, referrer=referrer, where=where)
    data = _resolve_references(load_raw(path, target), target, referrer=path, where=str(path))
    _validate(data, target, str(path))
    return data


def _reference_path(value: str, target: type[Schema], *, referrer: Path, where: str) -> Path:
    try:
        return resolve_reference(value, kind=str(target.params_kind), referrer=referrer)
    except FileNotFoundError as err:
        raise ConfigError(
            f"{where} = {value!r}: referenced file not found ({err.args[0]}); give a name under "
            f"params/{target.params_kind}/ or a .yaml path relative to this file"
        ) from None


def resolve_reference(value: str, *, kind: str, referrer: Path) -> Path:
    """A reference to a params file: a .yaml path (relative to the referring file) or a name
    under params/<kind>/ (of the params/ folder the referrer lies in, else the project's);
    FileNotFoundError when there is no such file."""
    if value.endswith((".yaml", ".yml")):
        path = (referrer.parent / value).resolve()
    else:
        root = next((p for p in referrer.resolve().parents if p.name == "params"), PARAMS_DIR)
        path = root / kind / f"{value}.yaml"
    if not path.is_file():
        raise FileNotFoundError(path)
    return path


# --------------------------------------------------------------------------------------------
# Schemas as types


def _schema_in(annotation: Any) -> type[Schema] | None:
    """The schema inside an annotation such as `X`, `X | None`, `list[X]` or `dict[str, X]`."""
    if isinstance(annotation, type) and issubclass(annotation, Schema):
        return annotation
    for arg in get_args(annotation):
        found = _schema_in(arg)
        if found is not None:
            return found
    return None


def _child_annotation(annotation: Any, part: str) -> Any:
    """The annotation of `part` inside a value of `annotation`: a schema's field or a dict's
    value; None when unknown."""
    if get_origin(annotation) is dict:
        return get_args(annotation)[1]
    schema = _schema_in(annotation)
    field = schema.model_fields.get(part) if schema is not None else None
    return field.annotation if field is not None else None


# --------------------------------------------------------------------------------------------
# Errors


def _validate(data: dict[str, Any], schema: type[S], source: str) -> S:
    try:
        return schema.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format(err, schema, source)) from None


def _format(err: ValidationError, schema: type[Schema], source: str) -> str:
    """One readable message: file, then one line per problem: key path, value, what is allowed."""
    lines = [f"{source}: {err.error_count()} invalid value(s)"]
    for item in err.errors():
        loc = ".".join(str(part) for part in item["loc"]) or "(top level)"
        if item["type"] == "extra_forbidden":
            lines.append(f"  {loc}: unknown key; {_allowed_keys(schema, item['loc'])}")
        elif item["type"] == "missing":
            lines.append(f"  {loc}: required key is missing")
        else:
            message = item["msg"].removeprefix("Value error, ")
            lines.append(f"  {loc} = {_short(item.get('input'))}: {message}")
    return "\n".join(lines)


def _allowed_keys(schema: type[Schema], loc: tuple) -> str:
    model: type[Schema] | None = schema
    for part in loc[:-1]:
        if model is None:
            break
        field = model.model_fields.get(str(part))
        if field is not None:
            model = _schema_in(field.annotation)
        # a part that is no field is a dict key or a union tag: stay on the current model
    if model is None:
        return "check the spelling against the schema (tinylab params show)"
    return "allowed keys: " + ", ".join(model.model_fields)


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
