"""A 9.x-dendrite-shaped request builder and a lean keep-alive HTTP/1.1 client.

For tests, the load test and the benchmark: requests are signed exactly like bittensor 9.12's
`Dendrite.preprocess_synapse_for_request` and can be pre-built as raw bytes, so the client
costs little next to the server being measured.
"""

from __future__ import annotations

import asyncio
import time
import uuid as uuid_mod

import msgspec

from streetcascade.miner.wire import EMPTY_BODY_HASH, signed_message

DENDRITE_VERSION = 91202  # bittensor 9.12.2's version_as_int


def synapse_body(image_b64: str, name: str, timeout: float, dendrite: dict, axon: dict, extra: dict | None = None) -> bytes:
    """Like `ImageSynapse.model_dump()` as the 9.x dendrite sends it."""
    body = {
        "name": name,
        "timeout": timeout,
        "total_size": 0,
        "header_size": 0,
        "dendrite": dendrite,
        "axon": axon,
        "computed_body_hash": "",
        "testnet_label": -1,
        "image": image_b64,
        "prediction": -1.0,
    }
    if name == "ExtendedImageSynapse":
        body["model_url"] = ""
    if extra:
        body.update(extra)
    return msgspec.json.encode(body)


def signed_headers(
    keypair,
    axon_hotkey: str,
    nonce: int | None = None,
    uuid: str | None = None,
    timeout: float = 12.0,
    name: str = "ImageSynapse",
    body_hash: str = EMPTY_BODY_HASH,
    sign_for: str | None = None,
    signer=None,
) -> dict[str, str]:
    """Headers of a signed request from `keypair` to the axon of `axon_hotkey`.
    `sign_for` signs for another axon hotkey; `signer` signs with another key (negative tests)."""
    nonce = time.time_ns() if nonce is None else nonce
    uuid = uuid or str(uuid_mod.uuid1())
    message = signed_message(nonce, keypair.ss58_address, sign_for or axon_hotkey, uuid, body_hash)
    signature = "0x" + (signer or keypair).sign(message).hex()
    return {
        "name": name,
        "timeout": str(timeout),
        "bt_header_axon_ip": "127.0.0.1",
        "bt_header_axon_port": "0",
        "bt_header_axon_hotkey": axon_hotkey,
        "bt_header_dendrite_ip": "127.0.0.1",
        "bt_header_dendrite_version": str(DENDRITE_VERSION),
        "bt_header_dendrite_nonce": str(nonce),
        "bt_header_dendrite_uuid": uuid,
        "bt_header_dendrite_hotkey": keypair.ss58_address,
        "bt_header_dendrite_signature": signature,
        "header_size": "640",
        "total_size": "4000",
        "computed_body_hash": body_hash,
    }


def build_request(keypair, axon_hotkey: str, image_b64: str, *, host: str = "127.0.0.1", port: int = 0,
                  name: str = "ImageSynapse", timeout: float = 12.0, nonce: int | None = None, uuid: str | None = None) -> bytes:
    """One complete raw HTTP/1.1 request (keep-alive), signed."""
    headers = signed_headers(keypair, axon_hotkey, nonce=nonce, uuid=uuid, timeout=timeout, name=name)
    dendrite = {
        "ip": "127.0.0.1",
        "version": DENDRITE_VERSION,
        "nonce": int(headers["bt_header_dendrite_nonce"]),
        "uuid": headers["bt_header_dendrite_uuid"],
        "hotkey": keypair.ss58_address,
        "signature": headers["bt_header_dendrite_signature"],
    }
    body = synapse_body(image_b64, name, timeout, dendrite, {"ip": host, "port": port, "hotkey": axon_hotkey})
    return raw_request(f"/{name}", headers, body, host=host, port=port)


def raw_request(path: str, headers: dict[str, str], body: bytes, host: str = "127.0.0.1", port: int = 0) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"host: {host}:{port}", "content-type: application/json", f"content-length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class RawConnection:
    """One keep-alive connection; `request(raw) -> (status, headers, body)`."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, host: str, port: int) -> "RawConnection":
        reader, writer = await asyncio.open_connection(host, port, limit=1 << 20)
        return cls(reader, writer)

    async def request(self, raw: bytes) -> tuple[int, dict[str, str], bytes]:
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            if line:
                k, _, v = line.partition(":")
                headers[k.strip().lower()] = v.strip()
        n = int(headers.get("content-length", "0"))
        body = await self.reader.readexactly(n) if n else b""
        return status, headers, body

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, OSError):
            pass
