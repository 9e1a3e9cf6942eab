"""Roadwork phrases in OCR output, tolerant of OCR errors (the OCR stage's evidence).

The text is normalised (case, accents, punctuation), and each vocabulary phrase is compared
with every run of the same number of words (one more or fewer, for words the OCR split or
merged) by rapidfuzz's normalised edit-distance similarity. Phrases shorter than 6 letters
must match exactly after normalisation, because one edit turns them into other words
("OBRAS" / "COBRAS").
"""

from __future__ import annotations

import msgspec

from streetcascade.errors import BackendUnavailable
from streetcascade.evidence import DEFAULT_TERMS, Vocabulary, normalise

try:
    from rapidfuzz import fuzz
except ImportError as exc:  # the `ocr` extra installs it
    raise BackendUnavailable(f"rapidfuzz is not installed (pip install 'streetcascade[ocr]'): {exc}") from exc

EXACT_BELOW = 6  # letters: shorter phrases must match exactly

__all__ = ["DEFAULT_TERMS", "Match", "Vocabulary", "find_phrases", "normalise"]


class Match(msgspec.Struct, frozen=True):
    phrase: str
    language: str
    score: float  # 0..100
    found: str  # the words of the text it matched


def find_phrases(vocabulary: Vocabulary, text: str) -> list[Match]:
    """Every vocabulary phrase found in `text`, best first (one entry per phrase)."""
    words = normalise(text).split()
    if not words:
        return []
    found: dict[str, Match] = {}
    for lang, phrases in vocabulary.terms.items():
        for phrase in phrases:
            norm = normalise(phrase)
            k = len(norm.split())
            need = 100.0 if len(norm.replace(" ", "")) < EXACT_BELOW else vocabulary.min_score
            best, where = 0.0, ""
            for n in {max(1, k - 1), k, k + 1}:
                for i in range(0, max(0, len(words) - n) + 1):
                    candidate = " ".join(words[i : i + n])
                    score = max(fuzz.ratio(norm, candidate), fuzz.ratio(norm.replace(" ", ""), candidate.replace(" ", "")))
                    if score > best:
                        best, where = score, candidate
            if best >= need and (norm not in found or best > found[norm].score):
                found[norm] = Match(phrase, lang, float(best), where)
    return sorted(found.values(), key=lambda m: -m.score)
