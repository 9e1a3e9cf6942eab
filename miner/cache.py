"""Answers by image: validators re-send images, so a repeat is answered without inference.

Keyed by blake2b-128 of the decoded image bytes; an LRU with a fixed number of entries. It also
coalesces concurrent requests for the same image onto one inference (`inflight`).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import OrderedDict

import msgspec


class Answer(msgspec.Struct, frozen=True):
    probability: float
    stage: str
    fallback: bool = False


def image_key(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=16).digest()


class AnswerCache:
    def __init__(self, max_entries: int = 4096):
        self.max_entries = max_entries
        self._data: OrderedDict[bytes, Answer] = OrderedDict()
        self.inflight: dict[bytes, asyncio.Future] = {}
        self.hits = 0
        self.misses = 0

    def get(self, key: bytes) -> Answer | None:
        answer = self._data.get(key)
        if answer is None:
            self.misses += 1
            return None
        self._data.move_to_end(key)
        self.hits += 1
        return answer

    def put(self, key: bytes, answer: Answer) -> None:
        if self.max_entries <= 0:
            return
        self._data[key] = answer
        self._data.move_to_end(key)
        while len(self._data) > self.max_entries:
            self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)
