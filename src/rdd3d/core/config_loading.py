"""Typed configuration: dataclass schemas, YAML files and dotted command-line overrides.

OmegaConf's structured configs do the heavy lifting (type checks, merging, unknown-key
detection with a "did you mean" hint); this module only turns its errors into messages that
name the source (file or ``--set``) and loads YAML with a safe loader.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence, TypeVar

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from rdd3d.core.fileio import atomic_open

Schema = TypeVar("Schema")


class ConfigError(ValueError):
    """A config file or override that does not fit the schema."""


def require(condition: bool, key: str, expected: str, value: object) -> None:
    """A config value check for a dataclass's ``__post_init__``: ``key`` (as the user writes it, e.g.
    ``trainer.epochs``) must be ``expected``; raised as ValueError, which loading turns into a ConfigError."""
    if not condition:
        raise ValueError(f"{key} must be {expected}, got {value!r}")


def load_yaml(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        with open(path, encoding="utf-8") as handle:
            content = yaml.safe_load(handle)
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    if content is None:
        return {}
    if not isinstance(content, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(content).__name__}")
    _check_expanded_size(content, str(path))
    return content


#: More values than any real config holds; a file of nested aliases ("billion laughs") exceeds it in a few lines.
MAX_CONFIG_VALUES = 100_000


def _check_expanded_size(content: object, source: str) -> None:
    """Refuse YAML whose aliases expand beyond :data:`MAX_CONFIG_VALUES` values: PyYAML shares an aliased
    node, but merging copies every reference, which takes minutes and gigabytes. Stops counting at the limit."""
    pending, count = [content], 0
    while pending:
        item = pending.pop()
        count += 1
        if count > MAX_CONFIG_VALUES:
            raise ConfigError(f"{source}: expands to more than {MAX_CONFIG_VALUES:,} values (nested aliases?); "
                              "refused")
        if isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)


def build_config(
    schema: type[Schema],
    files: Sequence[str | os.PathLike] = (),
    overrides: Sequence[str] = (),
    base: Schema | None = None,
) -> Schema:
    """Schema defaults (or ``base``) <- each YAML file in order <- ``key.path=value`` overrides."""
    merged = OmegaConf.structured(base if base is not None else schema)
    OmegaConf.set_readonly(merged, False)  # frozen dataclasses inside the schema still take overrides
    for path in files:
        merged = _merge(merged, OmegaConf.create(load_yaml(path)), source=str(path))
    for override in overrides:
        if "=" not in override:
            raise ConfigError(f"--set {override!r}: expected key.path=value")
        merged = _merge(merged, _parse_override(override), source=f"--set {override}")
    return _built(merged, source="config")


def _parse_override(override: str):
    key, value = override.split("=", 1)
    source = f"--set {override}"
    try:
        _check_expanded_size(yaml.safe_load(value), source)
        return OmegaConf.from_dotlist([override])
    except yaml.YAMLError as error:
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(f"{source}: the value of {key} is not valid YAML ({problem}); quote it to pass a "
                          "string with brackets, braces or a colon") from None


def with_changes(config: Schema, changes: Mapping[str, Any], source: str) -> Schema:
    """``config`` (a dataclass instance) with ``changes`` applied: each key a field or a dotted path to a nested
    one (``{"head.head_channels": 32}``), a mapping value setting several fields of a nested config. Typed and
    checked by the same machinery as config files and ``--set``; errors name ``source`` and the key."""
    merged = OmegaConf.structured(config)
    OmegaConf.set_readonly(merged, False)
    update = OmegaConf.create({})
    for key, value in changes.items():
        try:
            OmegaConf.update(update, key, value, merge=True, force_add=True)
        except OmegaConfBaseException as error:
            raise ConfigError(f"{source}[{key!r}]: {_describe(error)}") from None
    return _built(_merge(merged, update, source=source), source)


def _built(merged, source: str):
    """The dataclass objects of a merged config; a type error or a dataclass's own check names ``source``."""
    try:
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as error:
        raise ConfigError(f"{source}: {_describe(error)}") from None
    except ValueError as error:  # a dataclass's own check of its values
        raise ConfigError(f"{source}: {error}") from None


def config_from_dict(schema: type[Schema], values: dict, source: str) -> Schema:
    """Rebuild a config from plain containers (e.g. the copy stored in a checkpoint)."""
    merged = OmegaConf.structured(schema)
    OmegaConf.set_readonly(merged, False)
    merged = _merge(merged, OmegaConf.create(values), source=source)
    return OmegaConf.to_object(merged)


def to_yaml(config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(config))


def save_config(config, path: str | os.PathLike) -> None:
    """Write the fully resolved config next to a run's outputs (atomically)."""
    with atomic_open(path, "w", encoding="utf-8") as handle:
        handle.write(to_yaml(config))


def _merge(merged, update, source: str):
    try:
        return OmegaConf.merge(merged, update)
    except OmegaConfBaseException as error:
        raise ConfigError(f"{source}: {_describe(error)}") from None


def _describe(error: OmegaConfBaseException) -> str:
    # OmegaConf appends "full_key: ..., reference_type=..." lines; keep the first line and the key.
    message = str(error).splitlines()[0]
    key = getattr(error, "full_key", None)
    return f"{message} (key: {key})" if key else message
