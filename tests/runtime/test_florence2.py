"""Florence-2 `<OCR>` without PyTorch: the five exported graphs, greedy decoding in
runtime/florence2.py, token-identical to transformers' `generate()` on a tiny model of the real
classes (random weights), and importing neither torch nor transformers."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tokenizers", exc_type=ImportError)

from streetcascade.compile.models.florence2 import FAMILY, UInt8Preprocess  # noqa: E402
from streetcascade.compile.pipeline import compile_cascade  # noqa: E402
from streetcascade.runtime import load_engine_set  # noqa: E402
from support import REPO, run_python, write_config  # noqa: E402

SIZE = 96


@pytest.fixture(scope="module")
def florence(tmp_path_factory):
    root = tmp_path_factory.mktemp("florence2")
    ckpt = FAMILY.write_test_checkpoint(root / "ckpt")
    cfg = write_config(root / "c.toml", [{"name": "ocr", "family": "florence2", "source": str(ckpt), "input_size": SIZE, "max_batch": 1}],
                       root / "engines")
    return ckpt, compile_cascade(cfg, progress=False)


def transformers_tokens(ckpt, prompt: list[int], image: np.ndarray, max_new_tokens: int, suppress: list[int]) -> list[int]:
    import torch
    from transformers import Florence2ForConditionalGeneration

    from streetcascade.compile.models.florence2 import CLIP_NORM

    model = Florence2ForConditionalGeneration.from_pretrained(ckpt).eval()
    with torch.no_grad():
        pixel_values = UInt8Preprocess(CLIP_NORM)(torch.from_numpy(image[None]))
        out = model.generate(input_ids=torch.tensor([prompt]), pixel_values=pixel_values, max_new_tokens=max_new_tokens,
                             do_sample=False, num_beams=1, suppress_tokens=suppress or None)
    return out[0, 1:].tolist()  # after the decoder start token


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_greedy_tokens_identical_to_transformers(florence, seed):
    ckpt, dest = florence
    image = np.random.default_rng(seed).integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)
    with load_engine_set(dest) as es:
        reader = es.cascade.stages[0].reader
        eos = reader.generation["eos_token_id"]
        reader.suppress, reader.max_new_tokens = (eos,), 20  # random weights end at once otherwise
        ours = reader.generate(image)
        prompt = reader.generation["prompts"]["<OCR>"]
    want = transformers_tokens(ckpt, prompt, image, 20, [eos])
    assert ours == want
    SEEN.update(ours)


SEEN: set[int] = set()


def test_the_compared_sequences_were_not_trivial():
    """Across the images above, more than a token or two: the comparison had something to compare."""
    assert len(SEEN) >= 3, SEEN


def test_the_openvino_target_decodes_the_same_tokens(florence, tmp_path):
    """The six graphs through the OpenVINO target (tokenizer and generation settings carried in
    the IR's metadata, the decoder's cache through numpy): token-identical to transformers."""
    pytest.importorskip("openvino")
    ckpt, _ = florence
    cfg = write_config(tmp_path / "c.toml", [{"name": "ocr", "family": "florence2", "source": str(ckpt), "input_size": SIZE, "max_batch": 1}],
                       tmp_path / "engines", target={"backend": "openvino", "device": "cpu"})
    image = np.random.default_rng(0).integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)
    with load_engine_set(compile_cascade(cfg, progress=False)) as es:
        assert es.manifest.target.backend == "openvino"
        reader = es.cascade.stages[0].reader
        eos = reader.generation["eos_token_id"]
        reader.suppress, reader.max_new_tokens = (eos,), 20
        ours = reader.generate(image)
        prompt = reader.generation["prompts"]["<OCR>"]
    assert ours == transformers_tokens(ckpt, prompt, image, 20, [eos])


def test_stops_at_the_end_token_or_the_cap(florence):
    ckpt, dest = florence
    image = np.full((SIZE, SIZE, 3), 90, np.uint8)
    with load_engine_set(dest) as es:
        reader = es.cascade.stages[0].reader
        eos, vocab = reader.generation["eos_token_id"], reader.tokenizer.get_vocab_size()
        reader.max_new_tokens = 10
        capped = reader.generate(image)
        reader.suppress = tuple(i for i in range(vocab) if i != eos)  # only the end token is left
        ended = reader.generate(image)
        prompt = reader.generation["prompts"]["<OCR>"]
    assert len(capped) == 10 and capped == transformers_tokens(ckpt, prompt, image, 10, [])
    assert ended == [eos]


def test_decoding_imports_neither_torch_nor_transformers(florence):
    _, dest = florence
    code = f"""
import sys
for name in ('torch', 'transformers', 'onnx'):
    sys.modules[name] = None
import numpy as np
from streetcascade.runtime import load_engine_set
with load_engine_set({str(dest)!r}) as es:
    stage = es.cascade.stages[0]
    stage.reader.suppress = (stage.reader.generation["eos_token_id"],)
    stage.reader.max_new_tokens = 5
    print(len(stage.reader.generate(np.zeros(({SIZE}, {SIZE}, 3), np.uint8))))
"""
    r = run_python(f"import sys; sys.path.insert(0, {str(REPO / 'tests')!r})\n" + code)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1] == "5"


def test_images_without_text_never_reach_the_decoder(florence, monkeypatch):
    _, dest = florence
    with load_engine_set(dest) as es:
        reader = es.cascade.stages[0].reader
        calls = []
        monkeypatch.setattr(reader, "generate", lambda rgb: calls.append(1) or [reader.generation["eos_token_id"]])
        assert reader.read(np.full((480, 640, 3), 128, np.uint8)) == [] and calls == [] and reader.gated == 1
        from PIL import Image, ImageDraw

        img = Image.new("RGB", (640, 480), (90, 110, 120))
        ImageDraw.Draw(img).rectangle([120, 150, 540, 260], fill=(250, 140, 20))
        ImageDraw.Draw(img).text((140, 180), "ROAD WORK AHEAD", fill=(0, 0, 0), font_size=40)
        reader.read(np.asarray(img))
        assert calls == [1]  # text present: decoded


def test_ocr_with_region_parsed_like_transformers():
    import torch  # noqa: F401 - the reference post-processor uses it
    from transformers.models.florence2.processing_florence2 import Florence2PostProcessor

    from streetcascade.runtime.florence2 import parse_ocr_with_region

    text = ("</s><s>ROAD WORK<loc_100><loc_200><loc_400><loc_200><loc_400><loc_260><loc_100><loc_260>"
            "AHEAD 500 m<loc_120><loc_300><loc_380><loc_300><loc_380><loc_350><loc_120><loc_350></s><pad>")
    class NoTokenizer:
        all_special_tokens: list = []

    want = Florence2PostProcessor(config=None, tokenizer=NoTokenizer()).parse_ocr_from_text_and_spans(text, None, (640, 480))
    got = parse_ocr_with_region(text, (640, 480))
    assert [(w["text"], w["quad_box"]) for w in want] == got
    assert got[0][0] == "ROAD WORK" and len(got[0][1]) == 8


def test_reader_runs_the_region_task(florence):
    _, dest = florence
    with load_engine_set(dest) as es:
        reader = es.cascade.stages[0].reader
        reader.max_new_tokens = 8
        regions = reader.read_regions(np.zeros((SIZE, SIZE, 3), np.uint8))  # random weights: whatever parses
        assert isinstance(regions, list) and reader.prompt.tolist()[0] == reader.generation["prompts"]["<OCR>"]
