"""OCR text -> roadwork evidence: a multilingual vocabulary matched tolerant of OCR errors."""

import msgspec
import pytest

pytest.importorskip("rapidfuzz", exc_type=ImportError)

from streetcascade.evidence import DEFAULT_TERMS, Vocabulary, normalise  # noqa: E402
from streetcascade.runtime.evidence import find_phrases  # noqa: E402
from streetcascade.structs import decode_struct  # noqa: E402

from streetcascade.errors import ConfigError  # noqa: E402

V = Vocabulary()


@pytest.mark.parametrize("text,phrase,lang", [
    ("ROAD WORK AHEAD", "ROAD WORK AHEAD", "en"),
    ("R0AD W0RK AHEAD", "ROAD WORK AHEAD", "en"),      # OCR reads O as 0
    ("ROADWORK AHEAD 500 m", "ROAD WORK AHEAD", "en"),  # words merged
    ("Baustelle", "BAUSTELLE", "de"),
    ("BAUSTELIE 200 m", "BAUSTELLE", "de"),             # L read as I
    ("Straßenarbeiten", "STRASSENARBEITEN", "de"),
    ("DÉVIATION ->", "DEVIATION", "fr"),
    ("lavori in corso", "LAVORI IN CORSO", "it"),
    ("WERK IN UITVOERING", "WERK IN UITVOERING", "nl"),
    ("ROBOTY DROGOWE", "ROBOTY DROGOWE", "pl"),
    ("OBRAS NA VIA", "OBRAS NA VIA", "pt"),
    ("EN OBRAS", "EN OBRAS", "es"),
])
def test_work_zone_text_is_found(text, phrase, lang):
    matches = find_phrases(V, text)
    assert any(m.phrase == phrase and m.language == lang for m in matches), matches


@pytest.mark.parametrize("text", ["PARKING", "NO PARKING 8-18", "COBRAS", "DETROIT 25", "STOP", "ONE WAY", "", "   ", "!!!"])
def test_other_text_is_not_evidence(text):
    assert find_phrases(V, text) == []


def test_text_presence_and_normalisation():
    assert not V.has_text("") and not V.has_text(" .- ") and V.has_text("STOP")
    assert normalise("  Route  barrée! ") == "ROUTE BARREE"
    assert set(DEFAULT_TERMS) >= {"en", "de", "fr", "es", "it", "nl", "pl", "pt"}


@pytest.mark.parametrize("table,match", [
    ({"terms": {}}, "at least one language"),
    ({"terms": {"english": ["ROAD WORK"]}}, "two-letter language code"),
    ({"terms": {"en": []}}, "no phrases"),
    ({"terms": {"en": ["!?"]}}, "fewer than 3"),
    ({"min_score": 20}, "min_score"),
    ({"colour": "red"}, "colour"),
])
def test_bad_vocabulary_config_is_a_config_error(table, match):
    with pytest.raises(ConfigError, match=match):
        decode_struct(table, Vocabulary, "cascade.toml [evidence]")


def test_custom_vocabulary():
    v = msgspec.convert({"terms": {"en": ["GRAVEL ROAD"]}, "min_score": 90}, Vocabulary)
    assert [m.phrase for m in find_phrases(v, "LOOSE GRAVEL R0AD")] == ["GRAVEL ROAD"] and find_phrases(v, "ROAD WORK") == []
