"""`model_card.json`: the file NATIX asks miners to publish at the root of their Hugging Face
model repo (streetvision-subnet docs/Mining.md, "Submitted a Model"):

    {"model_name": ..., "description": ..., "version": "X.Y.Z",
     "submitted_by": "<hotkey SS58>", "submission_time": <unix seconds>}

The rules checked here are those of the subnet's last published validator-side check
(natix/validator/verify_models.py and natix/utils/model_format.py, July 2025): the four keys
model_name, version, submitted_by, submission_time present; submitted_by equal to the miner's
hotkey; submission_time a Unix time (seconds, or milliseconds), a numeric string or an ISO 8601
string, not before 2000 and not in the future. The docs add `description` and the X.Y.Z form,
so we require those too. Validators stopped checking cards in the validator itself (Nov 2025);
NATIX's server does it now, with code that is not public.
"""

from __future__ import annotations

import json
import re
import time
from datetime import datetime
from pathlib import Path

from streetcascade.errors import BadInput

REQUIRED_KEYS = ("model_name", "description", "version", "submitted_by", "submission_time")
OPTIONAL_KEYS = ("architecture", "notes")
_VERSION = re.compile(r"^\d+\.\d+\.\d+$")
_EARLIEST = 946684800  # 2000-01-01, as the subnet's is_valid_timestamp


def build_card(model_name: str, description: str, version: str, hotkey_ss58: str, now: float | None = None,
               architecture: str = "", notes: str = "") -> dict:
    card = {
        "model_name": model_name,
        "description": description,
        "version": version,
        "submitted_by": hotkey_ss58,
        "submission_time": int(time.time() if now is None else now),
    }
    if architecture:
        card["architecture"] = architecture
    if notes:
        card["notes"] = notes
    problems = check_card(card, hotkey_ss58, now)
    if problems:
        raise BadInput("model card would be invalid: " + "; ".join(problems))
    return card


def _timestamp(value) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value // 1000 if value > 10**12 else value
    if isinstance(value, str):
        if value.isdigit():
            return _timestamp(int(value))
        try:
            return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp())
        except ValueError:
            return None
    return None


def check_card(card, hotkey_ss58: str | None = None, now: float | None = None) -> list[str]:
    """Everything wrong with a parsed model card (empty list: valid)."""
    if not isinstance(card, dict):
        return [f"model card must be a JSON object, got {type(card).__name__}"]
    problems = [f"missing key {k!r}" for k in REQUIRED_KEYS if k not in card]
    extra = sorted(set(card) - set(REQUIRED_KEYS) - set(OPTIONAL_KEYS))
    if extra:
        problems.append(f"unknown keys {extra} (allowed extras: {list(OPTIONAL_KEYS)})")
    for key in ("model_name", "description", "submitted_by"):
        if key in card and not (isinstance(card[key], str) and card[key].strip()):
            problems.append(f"{key} must be a non-empty string")
    if "version" in card and not (isinstance(card["version"], str) and _VERSION.match(card["version"])):
        problems.append(f"version must be a string \"X.Y.Z\", got {card['version']!r}")
    if hotkey_ss58 is not None and isinstance(card.get("submitted_by"), str) and card["submitted_by"] != hotkey_ss58:
        problems.append(f"submitted_by is {card['submitted_by']}, but this miner's hotkey is {hotkey_ss58}")
    if "submission_time" in card:
        ts = _timestamp(card["submission_time"])
        latest = int(time.time() if now is None else now) + 60
        if ts is None:
            problems.append(f"submission_time must be a Unix time or ISO 8601 string, got {card['submission_time']!r}")
        elif not _EARLIEST <= ts <= latest:
            problems.append(f"submission_time {ts} is before 2000 or in the future")
    return problems


def read_card(path: str | Path):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BadInput(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadInput(f"{path}: not valid JSON: {exc}") from None


def write_card(path: str | Path, card: dict) -> None:
    Path(path).write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")


def describe_engine_set(engine: str) -> tuple[str, str, str, bool]:
    """(model_name, description, architecture, placeholder) derived from an engine set's
    manifest, or from the fake engine."""
    if engine == "fake":
        return ("streetcascade-fake", "streetcascade test engine (deterministic, NOT a roadwork detector)", "fake", True)
    from streetcascade.manifest import read_manifest

    manifest = read_manifest(engine)
    parts, archs = [], []
    placeholder = False
    for stage in manifest.stages:
        source = stage.source.rstrip("/").split("/")[-1] or stage.family
        precisions = sorted({g.precision for g in stage.graphs})
        parts.append(f"{stage.name}: {stage.family} {source} ({'/'.join(precisions)})")
        archs.append(f"{stage.family}:{source}")
        placeholder |= stage.placeholder_weights
    first = manifest.stages[0]
    name = f"streetcascade-{first.family}-{first.source.rstrip('/').split('/')[-1]}".lower()
    name = re.sub(r"[^a-z0-9._-]+", "-", name).strip("-")
    description = f"streetcascade cascade for NATIX StreetVision roadwork detection; {'; '.join(parts)}; target {manifest.target.name}"
    return name, description, ", ".join(archs), placeholder
