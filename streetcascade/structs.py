"""Reading msgspec Structs from TOML/JSON with errors that name the file and field path."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import TypeVar

import msgspec

from streetcascade.errors import ConfigError

T = TypeVar("T")


def decode_struct(raw: dict, type_: type[T], source: str) -> T:
    try:
        return msgspec.convert(raw, type_)
    except msgspec.ValidationError as exc:
        # msgspec's message already carries the path, e.g. "Object contains unknown field `x` - at `$.stages[0]`"
        raise ConfigError(f"{source}: {exc}") from None


def read_toml(path: str | Path) -> dict:
    path = Path(path)
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


def load_toml(path: str | Path, type_: type[T]) -> T:
    return decode_struct(read_toml(path), type_, str(path))


def load_json(path: str | Path, type_: type[T]) -> T:
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    try:
        return msgspec.json.decode(data, type=type_)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except msgspec.DecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON: {exc}") from None


def write_json(path: str | Path, obj) -> None:
    Path(path).write_bytes(msgspec.json.format(msgspec.json.encode(obj), indent=2) + b"\n")
