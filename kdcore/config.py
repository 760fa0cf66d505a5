"""Run configuration: kdcore defaults, then the task's defaults, then a TOML file, then ``--set`` overrides.

Every key a user writes must exist in the defaults (kdcore's or the task's); an unknown key is an error
that names it, says where it came from and suggests the closest valid key. Values must have the type of
the default (an integer is accepted where a float is expected). Schedule specs
(``distill.temperature``, ``distill.alpha``, ``distill.weights.*``) are checked when the schedule is
built, against the schedule's own parameters.
"""

from __future__ import annotations

import copy
import difflib
import os
import re
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import tomli_w

from kdcore.checkpoint import atomic_write_text

CORE_DEFAULTS: dict[str, Any] = {
    "plugin": "classify",
    "task": "",
    "seed": 0,
    "device": "auto",
    "out_dir": "runs",
    "run_name": "",
    "with_plugins": [],
    "data": {"path": "", "batch_size": 64, "eval_batch_size": 256, "num_workers": 0},
    "teacher": {
        "arch": "",
        "checkpoint": "",
        "epochs": 5,
        "optimizer": "adam",
        "lr": 1e-3,
        "lr_schedule": 1.0,
        "weight_decay": 0.0,
    },
    "student": {
        "arch": "",
        "epochs": 5,
        "optimizer": "adam",
        "lr": 1e-3,
        "lr_schedule": 1.0,
        "weight_decay": 0.0,
    },
    "distill": {
        "strategy": "offline",
        "loss": "soft_target_kl",
        "temperature": {"name": "constant", "value": 4.0},
        "alpha": {"name": "constant", "value": 0.9},
        "weights": {},
        "hints": [],
        "assistants": [],
        "extra_teachers": [],
        "teacher_weights": [],
        "baseline": True,
    },
    "train": {
        "log_every": 10,
        "eval_every": 1,
        "progress": True,
        "amp": True,
        "amp_dtype": "auto",
        "grad_clip": 0.0,
        "checkpoint_every_s": 10.0,
        "accumulate": 1,
        "teacher_cache": False,
        "compile": False,
        "deterministic": False,
    },
    "options": {},
    "variants": {},
    "primary_variant": "",
}

#: What every variant of a run shares: a variant may not change these (top-level keys, then distill keys).
SHARED_KEYS = (
    "plugin",
    "task",
    "seed",
    "device",
    "out_dir",
    "run_name",
    "with_plugins",
    "data",
    "teacher",
    "primary_variant",
)
SHARED_DISTILL_KEYS = ("baseline", "extra_teachers", "teacher_weights")
_VARIANT_NAME = re.compile(r"[A-Za-z0-9_-]+")

#: Counts that must be at least 1 (a stage of 0 epochs has no checkpoint to hand on).
AT_LEAST_ONE = (
    "teacher.epochs",
    "student.epochs",
    "data.batch_size",
    "data.eval_batch_size",
    "train.log_every",
    "train.eval_every",
    "train.accumulate",
)

#: Keys whose value is a schedule spec (a number or a table with a ``name``): free-form here.
SCHEDULE_KEYS = ("distill.temperature", "distill.alpha", "teacher.lr_schedule", "student.lr_schedule")
#: Tables whose own keys are free (each value is a schedule spec).
FREE_TABLES = ("distill.weights",)


class ConfigError(ValueError):
    """The configuration is invalid; the message names the key, its source and what was expected."""


def _is_schedule_key(key: str) -> bool:
    if key.startswith("variants."):  # variants.NAME.distill.temperature is a schedule key too
        key = key.split(".", 2)[2] if key.count(".") >= 2 else ""
    return key in SCHEDULE_KEYS or any(key.startswith(t + ".") for t in FREE_TABLES)


def merge(base: Mapping[str, Any], override: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Deep-merge ``override`` into a copy of ``base``.

    A schedule spec whose ``name`` changes replaces the old spec whole, so the old schedule's parameters
    do not leak into the new one.
    """
    out = copy.deepcopy(dict(base))
    for key, value in override.items():
        path = f"{prefix}{key}"
        old = out.get(key)
        replace_whole = (
            _is_schedule_key(path)
            and isinstance(value, Mapping)
            and isinstance(old, Mapping)
            and "name" in value
            and value["name"] != old.get("name")
        )
        if isinstance(value, Mapping) and isinstance(old, Mapping) and not replace_whole:
            out[key] = merge(old, value, prefix=f"{path}.")
        else:
            out[key] = copy.deepcopy(value)
    return out


def validate(config: Mapping[str, Any], schema: Mapping[str, Any], source: str, prefix: str = "") -> None:
    """Check that every key of ``config`` exists in ``schema`` with a compatible type.

    Raises:
        ConfigError: naming the key, ``source`` (a file or "--set") and the expected type or the closest key.
    """
    for key, value in config.items():
        path = f"{prefix}{key}"
        if path == "variants":
            _check_variants(value, schema, source)
            continue
        if _is_schedule_key(path) or f"{prefix}".rstrip(".") in FREE_TABLES:
            _check_schedule_spec(path, value, source)
            continue
        if key not in schema:
            raise ConfigError(f"unknown key {path!r} in {source}{_unknown_key_hint(key, schema, prefix)}")
        expected = schema[key]
        if isinstance(expected, Mapping):
            if not isinstance(value, Mapping):
                raise ConfigError(f"{path!r} in {source} must be a table, got {_type_name(value)}")
            validate(value, expected, source, prefix=f"{path}.")
            continue
        if not _type_ok(value, expected):
            raise ConfigError(
                f"{path!r} in {source} must be {_type_name(expected)}, got {_type_name(value)} ({value!r})"
            )
        if path in AT_LEAST_ONE and not (isinstance(value, int) and value >= 1):
            raise ConfigError(f"{path!r} in {source} must be an integer of at least 1, got {value!r}")


def _unknown_key_hint(key: str, schema: Mapping[str, Any], prefix: str) -> str:
    # Match the key against its siblings only: a shared table prefix ("student.") is no evidence.
    hint = difflib.get_close_matches(key, list(schema), n=1, cutoff=0.6)
    if hint:
        return f"; did you mean {prefix + hint[0]!r}?"
    if not schema:
        return f"; {prefix.rstrip('.') or 'this table'} takes no keys"
    return f"; valid keys here: {', '.join(prefix + k for k in schema)}"


def _check_variants(variants: Any, schema: Mapping[str, Any], source: str) -> None:
    """Each ``variants.NAME`` is a partial configuration that leaves the shared keys alone."""
    if not isinstance(variants, Mapping):
        raise ConfigError(
            f"'variants' in {source} must be a table of named variants, got {_type_name(variants)}"
        )
    for name, overlay in variants.items():
        where = f"variants.{name}"
        if not _VARIANT_NAME.fullmatch(name):
            raise ConfigError(f"variant name {name!r} in {source}: use letters, digits, '-' and '_' only")
        if not isinstance(overlay, Mapping):
            raise ConfigError(f"{where!r} in {source} must be a table, got {_type_name(overlay)}")
        shared = [k for k in SHARED_KEYS if k in overlay]
        shared += [f"distill.{k}" for k in SHARED_DISTILL_KEYS if k in overlay.get("distill", {})]
        if "variants" in overlay:
            shared.append("variants")
        if shared:
            raise ConfigError(
                f"{where}.{shared[0]} in {source}: every variant shares the teacher, data, seed and baseline "
                "of the run, so a variant may not change it"
            )
        validate(overlay, schema, f"{source} ({where})")


def variant_configs(config: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """``[(name, the run's config with that variant's overlay merged in)]``; ``[("", config)]`` with none."""
    base = {k: v for k, v in config.items() if k != "variants"}
    if not config.get("variants"):
        return [("", {**base, "variants": {}})]
    return [(name, {**merge(base, overlay), "variants": {}}) for name, overlay in config["variants"].items()]


def _check_schedule_spec(path: str, value: Any, source: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float | Mapping):
        raise ConfigError(
            f"{path!r} in {source} must be a number or a schedule table such as "
            f'{{name = "cosine", start = 4.0, end = 1.0}}, got {_type_name(value)} ({value!r})'
        )


def _type_ok(value: Any, expected: Any) -> bool:
    if isinstance(expected, bool):
        return isinstance(value, bool)
    if isinstance(expected, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(expected, float):
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, type(expected))


def _type_name(value: Any) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list"}
    for kind, name in names.items():
        if type(value) is kind:
            return name
    return "a table" if isinstance(value, Mapping) else type(value).__name__


def normalise(config: dict[str, Any], schema: Mapping[str, Any]) -> dict[str, Any]:
    """Turn integers into floats where the schema holds a float, so the saved config reads back the same."""
    for key, expected in schema.items():
        if key not in config:
            continue
        if isinstance(expected, float) and isinstance(config[key], int):
            config[key] = float(config[key])
        elif key == "variants" and isinstance(config[key], dict):
            for overlay in config[key].values():
                normalise(overlay, schema)
        elif isinstance(expected, Mapping) and isinstance(config[key], dict):
            normalise(config[key], expected)
    return config


def parse_set(item: str) -> dict[str, Any]:
    """Parse one ``a.b.c=value`` override into a nested dict; the value is read as TOML, else a string.

    ``--set student.lr=3e-4``, ``--set distill.hints='[]'``,
    ``--set distill.temperature='{name="cosine", start=8, end=1}'``, ``--set data.path=/data/x``.
    """
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set student.lr=0.01")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {item!r}: the key {key!r} is not a dotted name like student.lr")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    nested: dict[str, Any] = {}
    node = nested
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return nested


def read_toml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a TOML config file, with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc


def task_schema(task_defaults: Mapping[str, Any]) -> dict[str, Any]:
    """kdcore's defaults with the task's defaults merged in: the schema of a run's configuration."""
    core_keys = {k: v for k, v in task_defaults.items() if k not in ("options", "variants")}
    validate(core_keys, CORE_DEFAULTS, source="the task's defaults")
    schema = merge(CORE_DEFAULTS, task_defaults)
    validate({"variants": schema["variants"]}, schema, source="the task's defaults")
    return schema


def resolve(
    task_defaults: Mapping[str, Any],
    file_config: Mapping[str, Any] | None = None,
    file_name: str = "config file",
    sets: Iterable[str] = (),
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Build a run's configuration: defaults, task defaults, file, ``--set`` items, then CLI flags."""
    schema = task_schema(task_defaults)
    config = copy.deepcopy(schema)
    layers: list[tuple[Mapping[str, Any], str]] = []
    if file_config:
        layers.append((file_config, file_name))
    layers.extend((parse_set(item), f"--set {item}") for item in sets)
    if overrides:
        layers.append((overrides, "the command line"))
    for layer, source in layers:
        validate(layer, schema, source)
        config = merge(config, layer)
    primary = config["primary_variant"]
    if primary and primary not in config["variants"]:
        known = ", ".join(config["variants"]) or "none"
        raise ConfigError(f"primary_variant {primary!r} is not one of the config's variants ({known})")
    return normalise(config, schema)


def dump(config: Mapping[str, Any]) -> str:
    """The configuration as TOML text."""
    return tomli_w.dumps(dict(config))


def write_config(path: str | os.PathLike, config: Mapping[str, Any]) -> Path:
    """Atomically write the resolved configuration, rerunnable with ``kd train -c PATH``."""
    return atomic_write_text(path, dump(config))
