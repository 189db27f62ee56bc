"""Loading a config: YAML in, ``dotted.key=value`` overrides applied, validated, errors in one line.

``load_config`` reads the embedded default (``configs/default.yaml``) or a YAML file, applies
``--set`` overrides (values parsed as YAML; ``data.hf.0.name=...`` indexes a list section),
validates the ``OpenMindConfig`` tree (``schemas.config``) and raises ``ConfigError`` with one line
naming the field (and the key it probably meant).  ``dotted_keys`` is the same dotted naming read
back: a nested dict as ``{"train.lr": ..., "train.spike.window": ...}``, for listing what differs.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from schemas.config import DEFAULT_CONFIG, OpenMindConfig


def dotted_keys(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings as ``{"spike.window": 64, ...}`` (tuples as lists, as JSON has them)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(dotted_keys(v, key + "."))
        else:
            out[key] = list(v) if isinstance(v, tuple) else v
    return out


class ConfigError(ValueError):
    """A config that cannot be used; the message is one line naming the field."""


def _parse_value(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(data: dict, overrides: list[str] | None) -> dict:
    """Apply ``dotted.key=value`` strings (values parsed as YAML) to a nested dict, in place."""
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected dotted.key=value")
        key, _, raw = item.partition("=")
        parts = [p for p in key.strip().split(".") if p]
        if not parts:
            raise ConfigError(f"--set {item!r}: empty key")
        node: Any = data
        for i, part in enumerate(parts):
            slot: int | str = part
            if isinstance(node, list):  # a list section (data.hf: [...]): index it, data.hf.0.name=...
                where, rest = ".".join(parts[:i]), ".".join(parts[i + 1:] if part.isdigit() else parts[i:])
                if not (part.isdigit() and int(part) < len(node)):
                    raise ConfigError(f"--set {key}: {where} is a list of {len(node)} entries; index one "
                                      f"({where}.0{'.' + rest if rest else ''}=...) "
                                      f"or set the whole list (--set '{where}=[...]')")
                slot = int(part)
            elif node.get(part) is None and i < len(parts) - 1:
                node[part] = {}
            if i == len(parts) - 1:
                node[slot] = _parse_value(raw)
            elif not isinstance(node[slot], (dict, list)):
                raise ConfigError(f"--set {key}: {'.'.join(parts[: i + 1])} is not a section")
            else:
                node = node[slot]
    return data


def _did_you_mean(loc: tuple) -> str:
    """`` (did you mean 'lr'?)`` for an unknown key close to one the config section has (difflib)."""

    model: Any = OpenMindConfig
    for part in loc[:-1]:
        field = getattr(model, "model_fields", {}).get(str(part))
        ann = field.annotation if field is not None else None
        options = [t for t in (ann, *getattr(ann, "__args__", ())) if isinstance(t, type) and issubclass(t, BaseModel)]
        if not options:  # a plain value, a dict
            return ""
        model = options[0]
    close = difflib.get_close_matches(str(loc[-1]), list(getattr(model, "model_fields", {})), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def format_validation_error(err: ValidationError) -> str:
    """One line per problem: ``config error: train.lr: Input should be greater than 0 (got -1)``."""
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key" + _did_you_mean(tuple(e["loc"]))
        got = e.get("input")
        shown = "" if e["type"] in ("extra_forbidden", "missing") or isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"{loc}: {msg}{shown}")
    return "; ".join(lines)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> OpenMindConfig:
    """Read a YAML config (default: the embedded tiny one), apply overrides, validate.

    Raises ConfigError with a one-line message on any problem.
    """
    p = Path(path) if path else DEFAULT_CONFIG
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{p}{where}: not valid YAML: {problem}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be a mapping")
    apply_overrides(data, overrides)
    try:
        return OpenMindConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(f"config error in {p.name}: {format_validation_error(e)}") from None
