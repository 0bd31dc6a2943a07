"""One config system for every part of raydino.

A run is described by a tree of plain dataclasses. Presets are YAML files
shipped inside the package (``raydino/configs/<name>.yaml``); a user file can
replace a preset, and ``key.sub=value`` overrides go on top. Every key and
every value type is checked, and every value rule that needs no data
(:mod:`raydino.config.checks`), so a typo fails before any Ray work starts
instead of being silently ignored or retried on a worker.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import types
import typing
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from raydino.config.checks import ConfigError, check
from raydino.config.sections import (
    Config,
    DataConfig,
    EvalConfig,
    LossConfig,
    ModelConfig,
    PyramidConfig,
    SampleConfig,
    ServeConfig,
    TinyModelsConfig,
)
from raydino.config.training import DistillConfig, PriorConfig, RayWorkers, StageConfig, TrainConfig, TuneConfig

__all__ = ["Config", "ConfigError", "DataConfig", "DistillConfig", "EvalConfig", "LossConfig", "ModelConfig", "PriorConfig",
           "PyramidConfig", "RayWorkers", "SampleConfig", "ServeConfig", "StageConfig", "TinyModelsConfig", "TrainConfig", "TuneConfig",
           "apply_overrides", "from_dict", "is_local", "load_config", "lookup", "override", "save_config", "to_dict"]

log = logging.getLogger(__name__)

# keys that moved to the section of their consumer: old config files and run folders still load
MOVED = {"sample.fd_encoder": "eval.fd_encoder", "sample.attribute_classifier": "eval.attribute_classifier",
         "data.clip_fit_steps": "tiny.clip_fit_steps"}
MODEL_PATHS = ("pyramids.dino", "pyramids.clip", "eval.fd_encoder", "eval.attribute_classifier", "eval.part_segmenter")


def _check(tp: Any, value: Any, key: str) -> Any:
    """Return ``value`` converted to type ``tp`` or raise naming ``key``."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__}")
        return _from_dict(tp, value, key)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item,) = typing.get_args(tp)
        return [_check(item, v, f"{key}.{i}") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        kt, vt = typing.get_args(tp)
        return {_check(kt, k, f"{key}"): _check(vt, v, f"{key}.{k}") for k, v in value.items()}
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return _check(option, value, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: {value!r} is not a {tp}")
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is str and value is None:
        return ""
    if tp in (int, float, str, bool):
        if type(value) is not tp:
            raise ConfigError(f"{key}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
        return value
    return value


def _from_dict(cls: type, data: dict, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(f"unknown config key '{where}{unknown[0]}' (known: {', '.join(sorted(names))})")
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _check(hints[name], value, key)
    return cls(**kwargs)


def from_dict(data: dict) -> Config:
    """Build a :class:`Config` from a nested mapping, checking every key and type."""
    return _from_dict(Config, data)


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def preset_path(name: str) -> Path:
    path = Path(str(resources.files("raydino") / "configs" / f"{name}.yaml"))
    if not path.exists():
        known = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise ConfigError(f"unknown preset '{name}' (known: {', '.join(known)})")
    return path


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def lookup(cfg: Config | dict, key: str) -> Any:
    """The value at a key path (``loss.level_weights.0``); a path that names nothing is a :class:`ConfigError`."""
    node: Any = to_dict(cfg) if dataclasses.is_dataclass(cfg) else cfg
    for part in key.split("."):
        if isinstance(node, list):
            try:
                node = node[int(part)]
            except (ValueError, IndexError):
                raise ConfigError(f"'{key}' names no config value ('{part}' is not an index)") from None
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            raise ConfigError(f"'{key}' names no config value")
    return node


def _set(data: dict, key: str, value: Any) -> None:
    key = _moved(key)
    parts = key.split(".")
    node: Any = data
    for i, part in enumerate(parts[:-1]):
        nxt = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
        if not isinstance(nxt, (dict, list)):
            raise ConfigError(f"override '{key}': '{'.'.join(parts[: i + 1])}' is not a section")
        node = nxt
    last = parts[-1]
    if isinstance(node, list):
        try:
            node[int(last)] = value
        except (ValueError, IndexError):
            raise ConfigError(f"override '{key}': no list item '{last}'") from None
    else:
        node[last] = value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``key.sub=value`` strings; values are parsed as YAML scalars/lists."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key.sub=value")
        key, raw = item.split("=", 1)
        try:
            _set(data, key.strip(), yaml.safe_load(raw) if raw.strip() else "")
        except (IndexError, ValueError) as exc:
            if isinstance(exc, ConfigError):
                raise
            raise ConfigError(f"override '{item}': {exc}") from None
    return data


def override(cfg: Config, overrides: list[str] = (), values: dict[str, Any] | None = None) -> Config:
    """A checked copy of ``cfg`` with ``key=value`` strings, then typed ``values`` by key path, applied."""
    data = apply_overrides(to_dict(cfg), list(overrides))
    for key, value in (values or {}).items():
        _set(data, key, value)
    return check(from_dict(data))


def _moved(key: str) -> str:
    for old, new in MOVED.items():
        if key == old or key.startswith(old + "."):
            log.warning("config key '%s' is now '%s'", old, new)
            return new + key[len(old):]
    return key


def _migrate(layer: dict) -> dict:
    """A config file's layer with moved keys in their new sections."""
    for old in MOVED:
        section, name = old.split(".")
        if isinstance(layer.get(section), dict) and name in layer[section]:
            _set(layer, old, layer[section].pop(name))
    return layer


def load_config(preset: str = "demo", config_file: str | None = None, overrides: list[str] | None = None) -> Config:
    """Resolve a run's config: full defaults <- preset or file <- overrides."""
    base = to_dict(Config())
    layer = _migrate(load_yaml(config_file) if config_file else load_yaml(preset_path(preset)))
    _validate_keys(layer)
    merged = _merge(base, layer)
    merged = apply_overrides(merged, list(overrides or []))
    return check(resolve_paths(from_dict(merged)))


def is_local(spec: str) -> bool:
    """Whether a model spec names a local directory rather than a hub id, an open_clip tag or a URI."""
    if "://" in spec and not spec.startswith("file://"):
        return False
    return spec.startswith(("/", ".", "~", "file://", "data/")) or Path(spec).expanduser().exists()


def resolve_paths(cfg: Config) -> Config:
    """Expand ``{out}`` in model paths and make local paths absolute.

    Ray workers do not run in the driver's working directory, so a relative
    path that works on the command line would name nothing on a worker.
    Hub ids (``facebook/dinov2-base``), open_clip tags and URIs are left alone.
    """
    if is_local(cfg.out):
        cfg.out = str(Path(cfg.out).expanduser().resolve())
    for key in ("data.images", *MODEL_PATHS):
        section, name = key.split(".")
        part = getattr(cfg, section)
        value = getattr(part, name).replace("{out}", cfg.out)
        if value and "://" not in value and is_local(value):
            value = str(Path(value).expanduser().resolve())
        setattr(part, name, value)
    return cfg


def _validate_keys(layer: dict) -> None:
    from_dict(_merge(to_dict(Config()), layer))


@functools.cache
def _mappings(cls: type = Config, prefix: str = "") -> frozenset[str]:
    """The key paths of the free-form mapping fields (``tune.search``, ``loss.stage_level_weights``)."""
    out = set()
    for name, tp in typing.get_type_hints(cls).items():
        if dataclasses.is_dataclass(tp):
            out |= _mappings(tp, f"{prefix}{name}.")
        elif typing.get_origin(tp) is dict:
            out.add(prefix + name)
    return frozenset(out)


def _merge(base: Any, layer: Any, prefix: str = "") -> Any:
    """``layer`` over ``base``; a free-form mapping in ``layer`` replaces the base's whole, it is not merged."""
    if isinstance(base, dict) and isinstance(layer, dict) and prefix.rstrip(".") not in _mappings():
        out = dict(base)
        for key, value in layer.items():
            out[key] = _merge(base[key], value, f"{prefix}{key}.") if key in base else value
        return out
    return layer


def save_config(cfg: Config, path: str | Path) -> Path:
    """Write the resolved config, so every output says how it was made."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    return path
