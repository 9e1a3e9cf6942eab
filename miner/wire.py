"""The bittensor 9.x axon wire format, read from bittensor 9.12.2 (core/synapse.py, axon.py,
dendrite.py) and natix/protocol.py (streetvision-subnet v2.0.4).

Request: `POST /<SynapseClassName>`, JSON body = `synapse.model_dump()`, headers =
`synapse.to_headers()`: `name`, `timeout`, `bt_header_axon_{ip,port,hotkey}`,
`bt_header_dendrite_{ip,version,nonce,uuid,hotkey,signature}`, `header_size`, `total_size`,
`computed_body_hash`. ImageSynapse has no required hash fields, so `computed_body_hash` is
sha3_256 of the empty string.

Reply: the dendrite (`process_server_response`) builds `SynapseClass(**json)` from a 200 body
and copies every field onto its own synapse, then merges `bt_header_axon_*` response headers
into `synapse.axon`; a non-200 sets `axon.status_code = status` and `status_message =
json["message"]`. So the reply body needs only valid synapse fields (we echo the small ones
and leave the image out), and the status travels in `bt_header_axon_status_code`,
`bt_header_axon_status_message` and `bt_header_axon_process_time`.
"""

from __future__ import annotations

import hashlib
import math

import msgspec

from streetcascade.errors import BadInput

from .errors import BadBody, NotVerified

# Routes we serve: class name -> (its required_hash_fields, which for both is empty).
SYNAPSES: dict[str, tuple[str, ...]] = {"ImageSynapse": (), "ExtendedImageSynapse": ()}

EMPTY_BODY_HASH = hashlib.sha3_256(b"").hexdigest()
_RAW_NULL = msgspec.Raw(b"null")


def body_hash(required_fields: tuple[str, ...], body: dict | None = None) -> str:
    """bittensor's Synapse.body_hash: sha3_256 over the concatenated sha3_256 hex of each required field's str()."""
    if not required_fields:
        return EMPTY_BODY_HASH
    parts = "".join(hashlib.sha3_256(str(body[f]).encode()).hexdigest() for f in required_fields)  # type: ignore[index]
    return hashlib.sha3_256(parts.encode()).hexdigest()


class RequestHeaders(msgspec.Struct):
    dendrite_hotkey: str
    dendrite_nonce: int
    dendrite_uuid: str
    dendrite_signature: str  # "" when absent (rejected later as not verified)
    dendrite_version: int | None
    dendrite_ip: str
    axon_hotkey: str
    computed_body_hash: str
    timeout_s: float | None
    content_length: int | None


_WANTED = {
    b"bt_header_dendrite_hotkey",
    b"bt_header_dendrite_nonce",
    b"bt_header_dendrite_uuid",
    b"bt_header_dendrite_signature",
    b"bt_header_dendrite_version",
    b"bt_header_dendrite_ip",
    b"bt_header_axon_hotkey",
    b"computed_body_hash",
    b"timeout",
    b"content-length",
}
_MAX_HEADER_VALUE = 256
_MAX_U64 = 2**64 - 1
# time.time_ns() until the year 2262; a nonce is a time in ns (9.x) or a small counter (older).
_MAX_NONCE = 2**63 - 1
# A day; the verifier and the scheduler cap it far lower, this only keeps the arithmetic finite.
_MAX_TIMEOUT_S = 86400.0


def _bounded_int(raw: bytes, name: str, upper: int) -> int:
    """A decimal integer header in 0..upper, else BadInput (400)."""
    text = raw.strip()
    if not text.isdigit() or len(text) > 20:  # ASCII digits only: no sign, "_", spaces or exponents
        raise BadInput(f"{name} is not a non-negative integer of at most 20 digits")
    value = int(text)
    if value > upper:
        raise BadInput(f"{name} is out of range")
    return value


def parse_headers(raw: list[tuple[bytes, bytes]]) -> RequestHeaders:
    """Pick the synapse headers out of ASGI's (lowercased name, value) pairs; raise BadInput (400)
    for a missing or malformed required header."""
    found: dict[bytes, bytes] = {}
    for name, value in raw:
        if name in _WANTED:
            if len(value) > _MAX_HEADER_VALUE:
                raise BadInput(f"header {name.decode()} is longer than {_MAX_HEADER_VALUE} bytes")
            found[name] = value
    try:
        hotkey = found[b"bt_header_dendrite_hotkey"].decode("ascii")
        nonce_raw = found[b"bt_header_dendrite_nonce"]
        uuid = found[b"bt_header_dendrite_uuid"].decode("ascii")
    except KeyError as exc:
        raise BadInput(f"missing header {exc.args[0].decode()}") from None
    except UnicodeDecodeError:
        raise BadInput("non-ASCII dendrite header") from None
    if not hotkey or not uuid:
        raise BadInput("empty bt_header_dendrite_hotkey or bt_header_dendrite_uuid")
    # Every number is bounded here, so no later arithmetic (nanoseconds, float division) can
    # overflow on a stranger's value before the signature is even checked.
    nonce = _bounded_int(nonce_raw, "bt_header_dendrite_nonce", _MAX_NONCE)
    version = None
    if b"bt_header_dendrite_version" in found:
        version = _bounded_int(found[b"bt_header_dendrite_version"], "bt_header_dendrite_version", _MAX_U64)
    timeout = None
    if b"timeout" in found:
        try:
            timeout = float(found[b"timeout"])
        except ValueError:
            timeout = None  # bittensor sends str(None) when unset
        if timeout is not None and not (math.isfinite(timeout) and timeout > 0):
            timeout = None
        if timeout is not None:
            timeout = min(timeout, _MAX_TIMEOUT_S)
    length = None
    if b"content-length" in found:
        length = _bounded_int(found[b"content-length"], "content-length", _MAX_U64)
    return RequestHeaders(
        dendrite_hotkey=hotkey,
        dendrite_nonce=nonce,
        dendrite_uuid=uuid,
        dendrite_signature=found.get(b"bt_header_dendrite_signature", b"").decode("ascii", "replace"),
        dendrite_version=version,
        dendrite_ip=found.get(b"bt_header_dendrite_ip", b"").decode("ascii", "replace"),
        axon_hotkey=found.get(b"bt_header_axon_hotkey", b"").decode("ascii", "replace"),
        computed_body_hash=found.get(b"computed_body_hash", b"").decode("ascii", "replace"),
        timeout_s=timeout,
        content_length=length,
    )


class SynapseBody(msgspec.Struct):
    """The fields of ImageSynapse / ExtendedImageSynapse we read; unknown fields are skipped."""

    image: str = ""
    prediction: float = -1.0
    testnet_label: int = -1
    model_url: str | None = None
    name: str | None = None
    timeout: float | None = None
    computed_body_hash: str | None = None
    dendrite: msgspec.Raw = _RAW_NULL
    axon: msgspec.Raw = _RAW_NULL


_body_decoder = msgspec.json.Decoder(SynapseBody)


def decode_body(data: bytes) -> SynapseBody:
    if not data:
        raise BadInput("empty request body")
    try:
        body = _body_decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise BadBody(f"bad synapse body: {exc}") from None
    except msgspec.DecodeError as exc:
        raise BadInput(f"body is not JSON: {exc}") from None
    except RecursionError:  # msgspec's guard against deep nesting (a synapse is 3 levels deep)
        raise BadInput("body JSON is nested too deeply") from None
    if not body.image:
        raise BadBody("synapse has no image")
    return body


class ReplyAxon(msgspec.Struct):
    status_code: int
    status_message: str
    process_time: float
    hotkey: str


class SynapseReply(msgspec.Struct):
    """What the 9.x dendrite reads back: `ImageSynapse(**reply)`; the image is not echoed."""

    name: str
    timeout: float | None
    prediction: float
    testnet_label: int
    computed_body_hash: str
    dendrite: msgspec.Raw
    axon: ReplyAxon
    model_url: str | None = msgspec.field(default=None)


class ErrorReply(msgspec.Struct):
    message: str


_encoder = msgspec.json.Encoder()


def encode_reply(reply: SynapseReply) -> bytes:
    if reply.model_url is None:
        # ImageSynapse has no model_url field; pydantic would ignore it, but keep the body exact.
        return _encoder.encode(
            {
                "name": reply.name,
                "timeout": reply.timeout,
                "prediction": reply.prediction,
                "testnet_label": reply.testnet_label,
                "computed_body_hash": reply.computed_body_hash,
                "dendrite": reply.dendrite,
                "axon": reply.axon,
            }
        )
    return _encoder.encode(reply)


def encode_error(message: str) -> bytes:
    return _encoder.encode(ErrorReply(message))


def header_safe(text: str, limit: int = 200) -> bytes:
    """A header value: printable ASCII only, no CR/LF, bounded length."""
    clean = "".join(c if 32 <= ord(c) < 127 else " " for c in text[:limit])
    return clean.encode("ascii")


def response_headers(status: int, message: str, process_time_s: float, body_len: int, our_hotkey: str) -> list[tuple[bytes, bytes]]:
    return [
        (b"content-type", b"application/json"),
        (b"content-length", str(body_len).encode()),
        (b"bt_header_axon_status_code", str(status).encode()),
        (b"bt_header_axon_status_message", header_safe(message)),
        (b"bt_header_axon_process_time", f"{process_time_s:.6f}".encode()),
        (b"bt_header_axon_hotkey", our_hotkey.encode()),
    ]


def parse_signature(signature: str) -> bytes:
    """'0x' + 128 hex digits (bittensor's f"0x{keypair.sign(message).hex()}") -> 64 bytes."""
    if not signature:
        raise NotVerified("missing bt_header_dendrite_signature")
    text = signature[2:] if signature.startswith(("0x", "0X")) else signature
    if len(text) != 128:
        raise NotVerified(f"signature must be 64 bytes of hex, got {len(text)} hex chars")
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise NotVerified("signature is not hex") from None


def signed_message(nonce: int, dendrite_hotkey: str, axon_hotkey: str, uuid: str, body_hash_hex: str) -> str:
    return f"{nonce}.{dendrite_hotkey}.{axon_hotkey}.{uuid}.{body_hash_hex}"
