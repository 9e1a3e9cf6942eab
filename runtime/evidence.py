"""Text read in an image -> roadwork evidence (for the OCR stage).

Roadwork is very often written on the scene: "ROAD WORK AHEAD", "BAUSTELLE", "TRAVAUX". The
vocabulary (`Vocabulary`, a config table) lists such phrases per language; `Vocabulary.match`
finds them in OCR output tolerant of OCR errors: the text is normalised (case, accents,
punctuation), and each phrase is compared with every run of the same number of words (one
more or fewer, for words the OCR split or merged) using rapidfuzz's normalised edit-distance
similarity. Phrases shorter than 6 letters must match exactly after normalisation, because one
edit turns them into other words ("OBRAS" / "COBRAS"). `has_text` is the cheap check that
keeps images without text away from a decoder.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Annotated

import msgspec

from streetcascade.errors import BackendUnavailable

try:
    from rapidfuzz import fuzz
except ImportError as exc:  # the `ocr` extra installs it
    raise BackendUnavailable(f"rapidfuzz is not installed (pip install 'streetcascade[ocr]'): {exc}") from exc

# Work-zone phrases as they appear on signs, per language (ISO 639-1).
DEFAULT_TERMS: dict[str, list[str]] = {
    "en": ["ROAD WORK", "ROAD WORK AHEAD", "ROADWORKS", "ROAD WORKS AHEAD", "ROAD CLOSED", "LANE CLOSED", "LANE ENDS",
           "DETOUR", "DIVERSION", "WORK ZONE", "MEN AT WORK", "CONSTRUCTION", "UTILITY WORK AHEAD", "END ROAD WORK"],
    "de": ["BAUSTELLE", "STRASSENARBEITEN", "ARBEITSSTELLE", "UMLEITUNG", "FAHRBAHNVERENGUNG", "VOLLSPERRUNG", "BAUARBEITEN"],
    "fr": ["TRAVAUX", "ROUTE BARREE", "DEVIATION", "CHANTIER", "FIN DE CHANTIER"],
    "es": ["OBRAS", "EN OBRAS", "DESVIO", "CARRIL CERRADO", "TRABAJOS EN LA VIA", "FIN DE OBRAS"],
    "it": ["LAVORI IN CORSO", "CANTIERE", "DEVIAZIONE", "STRADA CHIUSA", "FINE LAVORI"],
    "nl": ["WERK IN UITVOERING", "WEGWERKZAAMHEDEN", "WEGWERKEN", "OMLEIDING"],
    "pl": ["ROBOTY DROGOWE", "OBJAZD", "UTRUDNIENIA W RUCHU"],
    "pt": ["OBRAS NA VIA", "TRABALHOS NA ESTRADA", "DESVIO", "OBRAS"],
}
EXACT_BELOW = 6  # letters: shorter phrases must match exactly


def normalise(text: str) -> str:
    """Upper case, accents removed, everything but letters and digits turned into single spaces."""
    decomposed = unicodedata.normalize("NFKD", text)
    plain = "".join(c for c in decomposed if not unicodedata.combining(c))
    plain = plain.upper().replace("ß", "SS")
    return re.sub(r"[^0-9A-Z]+", " ", plain).strip()


class Match(msgspec.Struct, frozen=True):
    phrase: str
    language: str
    score: float  # 0..100
    found: str  # the words of the text it matched


class Vocabulary(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The `[evidence]` table: phrases per language and how close a match must be."""

    terms: dict[str, list[str]] = msgspec.field(default_factory=lambda: {k: list(v) for k, v in DEFAULT_TERMS.items()})
    min_score: Annotated[float, msgspec.Meta(ge=50.0, le=100.0)] = 85.0
    # Fewer letters and digits than this in the whole text: no text (no decoder runs).
    min_text_chars: Annotated[int, msgspec.Meta(ge=1, le=100)] = 3

    def __post_init__(self):
        if not self.terms:
            raise ValueError("terms: at least one language with phrases is needed")
        for lang, phrases in self.terms.items():
            if not re.fullmatch(r"[a-z]{2}", lang):
                raise ValueError(f"terms: {lang!r} is not a two-letter language code")
            if not phrases:
                raise ValueError(f"terms.{lang}: no phrases")
            for p in phrases:
                if len(normalise(p)) < 3:
                    raise ValueError(f"terms.{lang}: phrase {p!r} has fewer than 3 letters or digits")

    def has_text(self, text: str) -> bool:
        return sum(c.isalnum() for c in text) >= self.min_text_chars

    def match(self, text: str) -> list[Match]:
        """Every vocabulary phrase found in `text`, best first (one entry per phrase)."""
        words = normalise(text).split()
        if not words:
            return []
        found: dict[str, Match] = {}
        for lang, phrases in self.terms.items():
            for phrase in phrases:
                norm = normalise(phrase)
                k = len(norm.split())
                need = 100.0 if len(norm.replace(" ", "")) < EXACT_BELOW else self.min_score
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
