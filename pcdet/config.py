"""Experiment configuration: YAML files with ``_BASE_CONFIG_`` inheritance, merged into an EasyDict, plus ``--set``.

Inheritance rules (a superset of OpenPCDet's, which resolves one level inside sub-dicts only):

* ``_BASE_CONFIG_: <path>`` may appear at the top level of a file or in any sub-dict; bases may have bases.
* A relative base path is looked up from the current directory (OpenPCDet's meaning: tools run from ``tools/``);
  if it is not there, from ``ROOT_DIR/tools`` so that the same configs also work from the repository root.
* The child overrides the base key by key, recursively for dicts; lists (and every other value) are replaced.
* The ``_BASE_CONFIG_`` entry itself is kept in the result, as OpenPCDet keeps it (it shows up in the logged config).
"""

from __future__ import annotations

import ast
import copy
import difflib
import logging
import os
from pathlib import Path
from typing import Any

import yaml
from easydict import EasyDict

from .utils.cli import InputError

BASE_KEY = "_BASE_CONFIG_"


class ConfigError(InputError, KeyError, ValueError):
    """A config that cannot be built: missing/cyclic base file, unknown key or wrongly typed ``--set`` value.

    Subclasses both KeyError (unknown key) and ValueError (bad value) so either ``except`` catches it.
    """

    def __str__(self) -> str:  # KeyError would repr() the message; keep it readable
        return str(self.args[0]) if self.args else ""


ROOT_DIR = Path(__file__).resolve().parent.parent

cfg = EasyDict()
cfg.ROOT_DIR = ROOT_DIR
cfg.LOCAL_RANK = 0


def plain_data(value: Any) -> Any:
    """EasyDict / tuples → dicts (str keys) / lists of plain values: what YAML, JSON and a weights_only checkpoint
    can hold."""
    if isinstance(value, dict):
        return {str(k): plain_data(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain_data(v) for v in value]
    return value


def _find_base_file(base: str, referrer: str) -> Path:
    path = Path(os.path.expanduser(str(base)))
    candidates = [path] if path.is_absolute() else [Path.cwd() / path, ROOT_DIR / "tools" / path]
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    tried = ", ".join(dict.fromkeys(str(c.resolve()) for c in candidates))  # from tools/ both are one path
    raise ConfigError(f"{BASE_KEY} '{base}' referenced by {referrer} not found (tried: {tried})")


def _load_yaml(path: Path) -> dict:
    with open(path, encoding="utf-8") as f:
        try:
            data = yaml.safe_load(f)
        except yaml.YAMLError as exc:
            raise ConfigError(f"cannot parse config file {path}: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level, got {type(data).__name__}")
    return data


def _deep_merge(base: dict, child: dict) -> dict:
    """``child`` over ``base``: dicts merge recursively, anything else (lists included) is replaced."""
    out = dict(base)
    for key, val in child.items():
        if isinstance(val, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], val)
        else:
            out[key] = val
    return out


def _resolve_bases(node: Any, referrer: str, chain: tuple[Path, ...]) -> Any:
    """Return ``node`` (a plain YAML value) with every ``_BASE_CONFIG_`` inside it expanded."""
    if isinstance(node, list):
        return [_resolve_bases(x, referrer, chain) for x in node]
    if not isinstance(node, dict):
        return node
    own = {key: _resolve_bases(val, referrer, chain) for key, val in node.items()}
    if BASE_KEY not in own:
        return own
    base_path = _find_base_file(own[BASE_KEY], referrer)
    if base_path in chain:
        cycle = " -> ".join(str(p) for p in (*chain, base_path))
        raise ConfigError(f"cyclic {BASE_KEY}: {cycle}")
    base = _resolve_bases(_load_yaml(base_path), str(base_path), (*chain, base_path))
    return _deep_merge(base, own)


def merge_new_config(config: EasyDict, new_config: dict) -> EasyDict:
    """Merge ``new_config`` into ``config`` in place (bases in ``new_config`` are resolved first)."""
    resolved = _resolve_bases(new_config, "<dict>", ())
    _merge_into(config, resolved)
    return config


def _merge_into(config: EasyDict, new_config: dict) -> None:
    for key, val in new_config.items():
        if isinstance(val, dict):
            if not isinstance(config.get(key), dict):
                config[key] = EasyDict()
            _merge_into(config[key], val)
        else:
            config[key] = copy.deepcopy(val)


def cfg_from_yaml_file(cfg_file: str | os.PathLike, config: EasyDict) -> EasyDict:
    """Load ``cfg_file`` (bases resolved recursively) and merge it into ``config``; returns ``config``."""
    path = Path(cfg_file)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path} (cwd: {Path.cwd()})")
    path = path.resolve()
    resolved = _resolve_bases(_load_yaml(path), str(path), (path,))
    _merge_into(config, resolved)
    return config


# ----------------------------------------------------------------------------------------------------------- --set
def _kind(value: Any) -> str:
    """Type family used by the ``--set`` check: ints may stand where floats are expected, bool never mixes."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, list | tuple):
        return "list"
    if isinstance(value, dict):
        return "dict"
    if value is None:
        return "none"
    return type(value).__name__


def _literal(text: str) -> Any:
    """``ast.literal_eval``; text it cannot parse is taken as a plain string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text


def _check_scalar(key: str, new: Any, old: Any) -> Any:
    old_kind, new_kind = _kind(old), _kind(new)
    if old_kind == "none":  # an unset option carries no type to check against
        return new
    if old_kind != new_kind or (old_kind == "number" and isinstance(old, int) and isinstance(new, float)):
        raise ConfigError(
            f"--set {key}: value {new!r} has type {type(new).__name__}, but the config holds {old!r} "
            f"({type(old).__name__})"
        )
    if old_kind == "number" and isinstance(old, float):
        return float(new)
    return new


def _coerce_list(key: str, raw: Any, old: list | tuple) -> list:
    if isinstance(raw, str):
        text = raw.strip()
        if text.startswith("[") and text.endswith("]"):
            text = text[1:-1]
        raw = [_literal(part.strip()) for part in text.split(",") if part.strip()]
    elif not isinstance(raw, list | tuple):
        raw = [raw]
    old_kinds = {_kind(x) for x in old}
    out = []
    for i, item in enumerate(raw):
        if not old_kinds or "none" in old_kinds:
            out.append(item)
            continue
        if "str" in old_kinds and not isinstance(item, str):
            item = str(item)  # e.g. a class name that happens to parse as a number
        if _kind(item) not in old_kinds:
            expected = " or ".join(sorted(old_kinds))
            raise ConfigError(f"--set {key}: element {i} ({item!r}) should be {expected} like the existing {old!r}")
        if _kind(item) == "number" and all(isinstance(x, float) for x in old if _kind(x) == "number"):
            item = float(item)
        out.append(item)
    return out


def _coerce_dict(key: str, raw: Any, old: dict) -> None:
    """``"A:1,B:2"`` (OpenPCDet's form) or a dict literal: update existing sub-keys of ``old`` in place."""
    if isinstance(raw, str):
        pairs = {}
        for part in raw.split(","):
            if ":" not in part:
                raise ConfigError(f"--set {key}: expected 'KEY:VALUE,KEY:VALUE' for a dict option, got {raw!r}")
            sub_key, sub_val = part.split(":", 1)
            pairs[sub_key.strip()] = sub_val.strip()
        raw = pairs
    if not isinstance(raw, dict):
        raise ConfigError(f"--set {key}: the config holds a dict here, got {raw!r}")
    for sub_key, sub_val in raw.items():
        full = f"{key}.{sub_key}"
        if sub_key not in old:
            raise _unknown_key_error(full, f"{key}.", sub_key, old)
        old[sub_key] = _coerce(full, sub_val, old[sub_key])


def _coerce(key: str, raw: Any, old: Any) -> Any:
    value = _literal(raw) if isinstance(raw, str) else raw
    if isinstance(old, dict):
        _coerce_dict(key, value if isinstance(value, dict) else raw, old)
        return old
    if isinstance(old, list | tuple):
        return _coerce_list(key, value, old)
    if isinstance(old, str) and not isinstance(value, str):
        # A string option set to something that parses as a number/bool ("001", "True"): keep the text.
        return raw if isinstance(raw, str) else _check_scalar(key, value, old)
    return _check_scalar(key, value, old)


def _unknown_key_error(full_key: str, prefix: str, subkey: str, level: dict) -> ConfigError:
    """Name the key as typed, with the closest existing keys at the level where lookup failed."""
    close = difflib.get_close_matches(subkey, [str(k) for k in level.keys()], n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(prefix + c for c in close)}?" if close else ""
    available = ", ".join(sorted(str(k) for k in level.keys()))
    return ConfigError(f"unknown config key '{full_key}'{hint} (keys at this level: {available})")


def cfg_from_list(cfg_list: list[str], config: EasyDict) -> EasyDict:
    """Apply ``--set KEY VALUE KEY VALUE ...`` overrides (dotted keys) to ``config`` in place."""
    if len(cfg_list) % 2 != 0:
        raise ConfigError(f"--set expects KEY VALUE pairs, got an odd number of items: {list(cfg_list)}")
    for full_key, raw in zip(cfg_list[0::2], cfg_list[1::2]):
        parts = full_key.split(".")
        level = config
        for depth, subkey in enumerate(parts):
            if not isinstance(level, dict) or subkey not in level:
                if not isinstance(level, dict):
                    raise ConfigError(f"unknown config key '{full_key}': '{'.'.join(parts[:depth])}' is not a dict")
                prefix = "".join(f"{p}." for p in parts[:depth])
                raise _unknown_key_error(full_key, prefix, subkey, level)
            if depth < len(parts) - 1:
                level = level[subkey]
        last = parts[-1]
        level[last] = _coerce(full_key, raw, level[last])
    return config


def log_config_to_file(config: dict, pre: str = "cfg", logger: logging.Logger | None = None) -> None:
    """Log every entry as ``pre.KEY: value``, with a header line per sub-dict (the layout of training logs)."""
    logger = logger or logging.getLogger("pcdet")
    for key, val in config.items():
        if isinstance(val, dict):
            logger.info(f"----------- {key} -----------")
            log_config_to_file(val, pre=f"{pre}.{key}", logger=logger)
        else:
            logger.info(f"{pre}.{key}: {val}")
