"""`streetcascade natix-register`: the economy registration step of the subnet's docs, as the
subnet's own `register.sh` (streetvision-subnet, Jan 2026) does it:

    TIMESTAMP=$(date +%s)
    signature = hex(sr25519 sign of the timestamp string by the hotkey)   # btcli w sign, no 0x
    POST $BASE_URL/participants/register  (Content-Type: application/json)
      {"uid": "<uid>", "message": "<timestamp>", "natix_public_key": "<hotkey ss58>",
       "natix_signature": "<hex>", "type": "miner", "model_repo": "<user/model>"}
    GET  $BASE_URL/participants/registration-status/<uid>   -> {"status": ..., "error_message": ...}

Every value is a JSON string (the script builds the body with `jq --arg`). Only the standard
library talks HTTP here: the step runs once, by hand.
"""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

from streetcascade.errors import BadInput, StreetcascadeError

DEFAULT_URL = "https://hydra.natix.network"
_REPO = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
DONE = {"succeeded", "success"}
FAILED = {"failed", "error"}


class RegistrationError(StreetcascadeError):
    """NATIX's application server refused or could not be reached."""

    exit_code = 15


def model_repo(value: str) -> str:
    """"user/model" from "user/model" or a huggingface.co URL (like the subnet's sanitize_model_repo)."""
    text = value.strip()
    for prefix in ("https://huggingface.co/", "http://huggingface.co/", "huggingface.co/", "hf://"):
        if text.startswith(prefix):
            text = text[len(prefix):]
    text = text.strip("/")
    parts = text.split("/")
    if len(parts) > 2 and parts[2] in ("tree", "blob", "resolve"):
        text = "/".join(parts[:2])
    if not _REPO.match(text):
        raise BadInput(f"model repo must be a Hugging Face repo like \"user/model\", got {value!r}")
    return text


@dataclass(frozen=True)
class RegistrationRequest:
    url: str
    body: dict

    def as_text(self) -> str:
        return f"POST {self.url}\nContent-Type: application/json\n\n{json.dumps(self.body, indent=2)}"


def build_request(keypair, uid: int, repo: str, base_url: str = DEFAULT_URL, participant_type: str = "miner",
                  now: float | None = None) -> RegistrationRequest:
    """A signed registration request: the hotkey signs the decimal Unix timestamp (UTF-8)."""
    if uid < 0:
        raise BadInput(f"uid must be >= 0, got {uid}")
    message = str(int(time.time() if now is None else now))
    signature = keypair.sign(message.encode("utf-8")).hex()
    body = {
        "uid": str(uid),
        "message": message,
        "natix_public_key": keypair.ss58_address,
        "natix_signature": signature,
        "type": participant_type,
        "model_repo": model_repo(repo),
    }
    return RegistrationRequest(base_url.rstrip("/") + "/participants/register", body)


def _call(req: urllib.request.Request, timeout_s: float) -> dict:
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            data = resp.read(1 << 20)
    except urllib.error.HTTPError as exc:
        detail = exc.read(4096).decode("utf-8", "replace")
        raise RegistrationError(f"{req.full_url}: HTTP {exc.code}: {detail[:500]}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise RegistrationError(f"{req.full_url}: cannot reach the server: {exc}") from None
    try:
        out = json.loads(data or b"{}")
    except json.JSONDecodeError:
        raise RegistrationError(f"{req.full_url}: the answer is not JSON: {data[:200]!r}") from None
    return out if isinstance(out, dict) else {"detail": out}


def send(request: RegistrationRequest, timeout_s: float = 30.0) -> dict:
    data = json.dumps(request.body).encode()
    req = urllib.request.Request(request.url, data=data, method="POST", headers={"Content-Type": "application/json"})
    return _call(req, timeout_s)


def status(base_url: str, uid: int, timeout_s: float = 30.0) -> dict:
    req = urllib.request.Request(f"{base_url.rstrip('/')}/participants/registration-status/{uid}", method="GET")
    return _call(req, timeout_s)


def wait_for_status(base_url: str, uid: int, wait_s: float, every_s: float = 3.0, on_status=None) -> dict:
    """Poll the status until it succeeds, fails or `wait_s` passes (register.sh: 3 s, 180 s)."""
    deadline = time.monotonic() + wait_s
    last: dict = {}
    while True:
        last = status(base_url, uid)
        state = str(last.get("status", "")).lower()
        if on_status is not None:
            on_status(state)
        if state in DONE:
            return last
        if state in FAILED:
            raise RegistrationError(f"registration of uid {uid} failed: {last.get('error_message') or last}")
        if time.monotonic() + every_s > deadline:
            return last
        time.sleep(every_s)
