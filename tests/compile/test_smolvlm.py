"""The SmolVLM / Idefics3 judge (family smolvlm) on tiny random-initialised models of both real
classes: the compiled chain (numpy preparation, vision graph, prefill graph; no torch) against
transformers' own processor (image splitting off) and forward on images of other sizes, with a
prompt of another length, in a left-padded batch, and with another max_image_size; the compiled
prompt against the processor's; the checkpoints and settings the compiler must refuse."""

from __future__ import annotations

import json
import shutil

import msgspec
import numpy as np
import pytest

pytest.importorskip("tokenizers", exc_type=ImportError)

from streetcascade.compile.models import get_family  # noqa: E402
from streetcascade.compile.pipeline import compile_cascade  # noqa: E402
from streetcascade.runtime import load_engine_set  # noqa: E402
from streetcascade.runtime.images import decode_image  # noqa: E402
from streetcascade.runtime.vlm_host import assemble, left_pad, visual_index  # noqa: E402
from support import SAMPLES, write_config  # noqa: E402
from vlm_support import QUESTION, load_model, log_softmax, processor_inputs, smolvlm_processor, transformers_logits, with_one_placeholder  # noqa: E402

from streetcascade.config import load_config  # noqa: E402
from streetcascade.errors import CompileError  # noqa: E402

BAR = 1e-3  # the bar on yes/no log-probabilities, FP32
PRESETS = ("tiny", "tiny-idefics3")  # SmolVLMForConditionalGeneration, Idefics3ForConditionalGeneration
SHORT = "Road work?"


def images() -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    shots = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in [(96, 320, 3), (400, 300, 3), (224, 224, 3), (37, 501, 3)]]
    return [*shots, decode_image((SAMPLES / "street-barrier.jpg").read_bytes())]


def expected(model, processor, imgs, question, answer_ids) -> np.ndarray:
    return np.concatenate([transformers_logits(model, processor_inputs(processor, im, question, do_image_splitting=False), answer_ids) for im in imgs])


def assert_close(ours: np.ndarray, want: np.ndarray, what: str) -> None:
    assert np.abs(log_softmax(ours) - log_softmax(want)).max() < BAR, what
    assert np.abs(ours - want).max() < BAR, what


@pytest.mark.parametrize("preset", PRESETS)
def test_answer_logprobs_equal_transformers_at_other_sizes_and_prompts(tiny_vlm, preset):
    """Images of other sizes and aspect ratios (the processor's two resizes), the compiled prompt
    and a shorter one rendered by the processor, alone and in a batch; and two prompts of
    different lengths left-padded into one prefill (positions as generate() makes them): answer
    log-probabilities within 1e-3 of transformers' forward on its own processor's inputs."""
    ckpt, dest = tiny_vlm("smolvlm", preset)
    processor, model = smolvlm_processor(ckpt), load_model(ckpt, "smolvlm")
    imgs = images()
    with load_engine_set(dest) as es:
        judge = es.cascade.stages[0].judge
        spec = judge.spec
        for question in (spec.prompt, SHORT):
            if question != spec.prompt:  # another prompt length: the processor's prompt ids, same graphs
                ids = processor_inputs(processor, imgs[0], question, do_image_splitting=False)["input_ids"][0].numpy()
                judge.__init__(judge.engines, msgspec.structs.replace(spec, prompt_ids=with_one_placeholder(ids, spec.image_token_id)))
            want = expected(model, processor, imgs, question, spec.answer_ids)
            assert_close(judge.run(imgs)["answer_logits"], want, question)
            assert_close(judge.run(imgs[:2])["answer_logits"], want[:2], f"{question} (batch)")
            p_yes = np.exp(log_softmax(want))[:, np.array(spec.answer_yes)].sum(axis=1)
            assert np.allclose(1 / (1 + np.exp(-judge.run(imgs)["yes_logodds"])), p_yes, atol=1e-4)
        assert np.ptp(log_softmax(want)[:, 0]) > 0.05  # the comparison had something to compare: answers move with the image

        # Two prompts of different lengths in one prefill: the shorter row is left-padded.
        encoded = judge.encode(imgs[0])
        rows = [assemble(p, spec.image_token_id, spec.vision_tokens) for p in (spec.prompt_ids, judge.spec.prompt_ids)]
        ids, mask = left_pad(rows, judge.pad_id)
        feeds = {"input_ids": ids, "attention_mask": mask, "position_ids": judge.prep.positions(ids, mask, []),
                 "visual_index": visual_index(ids, spec.image_token_id), "image_embeds": np.concatenate([encoded[0]["image_embeds"]] * 2)}
        with judge.engines["prefill"].slot() as slot:
            got = slot.infer(feeds)["answer_logits"]
    want = np.concatenate([expected(model, processor, imgs[:1], q, spec.answer_ids) for q in (spec.prompt, SHORT)])
    assert mask.min() == 0 and (mask.sum(axis=1) == [len(r) for r in rows]).all()
    assert_close(got, want, "left-padded prompts of different lengths")


def test_another_max_image_size(tiny_vlm, tmp_path):
    """A processor whose max_image_size is not the vision tower's image_size (96 px: 6x6 patches
    of a 8x8 position grid, the model's bucketing of positions): graphs and parity follow it."""
    ckpt, _ = tiny_vlm("smolvlm")
    copy = tmp_path / "ckpt"
    shutil.copytree(ckpt, copy)
    pre = json.loads((copy / "preprocessor_config.json").read_text())
    (copy / "preprocessor_config.json").write_text(json.dumps({**pre, "max_image_size": {"longest_edge": 96}, "size": {"longest_edge": 384}}))
    (copy / "processor_config.json").write_text(json.dumps({"image_seq_len": 9, "processor_class": "SmolVLMProcessor"}))
    cfg = write_config(tmp_path / "c.toml", [{"name": "judge", "family": "smolvlm", "source": str(copy), "max_batch": 1}], tmp_path / "engines")
    processor, model = smolvlm_processor(copy), load_model(copy, "smolvlm")
    imgs = images()[:3]
    with load_engine_set(compile_cascade(cfg, progress=False)) as es:
        judge = es.cascade.stages[0].judge
        assert (judge.spec.image_side, judge.spec.vision_tokens, judge.spec.resize_longest_edge) == (96, 9, 384)
        assert_close(judge.run(imgs)["answer_logits"], expected(model, processor, imgs, judge.spec.prompt, judge.spec.answer_ids), "96 px")


@pytest.mark.parametrize("system", ["", "You judge street photos."])
def test_compiled_prompt_equals_the_processors(tiny_vlm, tmp_path, system):
    ckpt, _ = tiny_vlm("smolvlm")
    cfg = write_config(tmp_path / "c.toml", [{"name": "judge", "family": "smolvlm", "source": str(ckpt), "judge": {"prompt": QUESTION, "system": system}}],
                       tmp_path / "engines")
    stage = load_config(cfg).stages[0]
    family = get_family("smolvlm")
    spec, prompt = family.spec(stage, family.open(stage, cfg, weights=False))
    processor = smolvlm_processor(ckpt)
    want = processor_inputs(processor, np.zeros((150, 260, 3), np.uint8), QUESTION, system=system, do_image_splitting=False)
    assert assemble(spec.prompt_ids, spec.image_token_id, spec.vision_tokens).tolist() == want["input_ids"][0].tolist()
    assert spec.vision_tokens == processor.image_seq_len == int((want["input_ids"][0] == spec.image_token_id).sum())
    assert system in prompt.text and prompt.text.endswith("Assistant:") and "<global-img><image><fake_token_around_image>" in prompt.text
    tok = processor.tokenizer
    assert {tok.decode([i]).strip() for i in spec.answer_ids} == {"yes", "Yes", "no", "No"}
    assert all(tok.decode([i]).strip().lower() == ("yes" if y else "no") for i, y in zip(spec.answer_ids, spec.answer_yes))


def test_manifest_records_the_judge(tiny_vlm):
    from streetcascade.manifest import read_manifest

    _, dest = tiny_vlm("smolvlm")
    entry = read_manifest(dest).stages[0]
    v = entry.vlm
    assert entry.kind == "vlm" and [g.role for g in entry.graphs] == ["vision", "prefill"]
    assert (v.model, v.image_side, v.resize_longest_edge, v.resample) == ("smolvlm", 128, 512, "lanczos")
    assert v.vision_tokens == (128 // 16) ** 2 // 2**2 and v.max_tokens == len(v.prompt_ids) - 1 + v.vision_tokens and v.expected_ms > 0
    assert v.parity.max_abs_logit_error < BAR and v.parity.n_images == 2
    vision, prefill = entry.graphs
    assert vision.io.inputs[0].shape == ["batch", 3, 128, 128] and prefill.io.axis_sizes == {"sequence": v.max_tokens, "tokens": v.vision_tokens}
    assert prefill.parity.max_abs_logit_error < BAR and vision.parity.max_abs_prob_error < 1e-4


def _stage(tmp_path, ckpt, family="smolvlm", **fields):
    cfg = write_config(tmp_path / "c.toml", [{"name": "judge", "family": family, "source": str(ckpt), **fields}], tmp_path / "engines")
    return load_config(cfg).stages[0]


def test_bad_settings_and_checkpoints_are_refused(tiny_vlm, tmp_path):
    ckpt, _ = tiny_vlm("smolvlm")
    family = get_family("smolvlm")
    with pytest.raises(CompileError, match=r"\[stages.judge\] image_splitting = true"):
        family.graphs(_stage(tmp_path, ckpt, judge={"image_splitting": True}))
    with pytest.raises(CompileError, match="qwen3-vl does not split images"):
        get_family("qwen3-vl").graphs(_stage(tmp_path, "random:tiny", family="qwen3-vl", judge={"image_splitting": True}))
    with pytest.raises(CompileError, match="no single-token spelling of the no words"):
        family.graphs(_stage(tmp_path, ckpt, judge={"yes": ["yes"], "no": ["roadwork-absent-for-sure"]}))
    with pytest.raises(CompileError, match="'smolvlm' model; family qwen3-vl takes 'qwen3_vl' \\(family smolvlm\\)"):
        compile_cascade(write_config(tmp_path / "q.toml", [{"name": "judge", "family": "qwen3-vl", "source": str(ckpt)}], tmp_path / "e"), progress=False)
    qwen = get_family("qwen3-vl").write_test_checkpoint(tmp_path / "qwen")
    with pytest.raises(CompileError, match="family smolvlm takes 'smolvlm' or 'idefics3' \\(family qwen3-vl\\)"):
        family.graphs(_stage(tmp_path, qwen))
    for name, content, message in [("processor_config.json", {"image_seq_len": 64}, "image_seq_len 64 differs from the model's 16 tokens"),
                                   ("preprocessor_config.json", {"max_image_size": {"longest_edge": 100}}, "max_image_size 100 px is not a multiple"),
                                   ("preprocessor_config.json", {"resample": 5}, "resample 5 is not one of Pillow's")]:
        copy = tmp_path / f"bad-{name}-{next(iter(content))}"
        shutil.copytree(ckpt, copy)
        (copy / name).write_text(json.dumps({**json.loads((copy / name).read_text()), **content}))
        with pytest.raises(CompileError, match=message):
            family.graphs(_stage(tmp_path, copy))
    with pytest.raises(CompileError, match="unknown preset"):
        family.graphs(_stage(tmp_path, "random:smolvlm-9000m"))


def test_int4_judge_with_int8_vision_is_gated_and_close(tiny_vlm, tmp_path):
    """The operator default's precisions (INT4 language model, INT8 vision tower) on SmolVLM: both
    graphs quantized, both carrying the judge's accuracy gate (yes/no decisions against the FP32
    graphs), p(yes) within the stated INT4 tolerance of transformers' FP32 forward."""
    from streetcascade.manifest import read_manifest

    ckpt, _ = tiny_vlm("smolvlm")
    stage = {"name": "judge", "family": "smolvlm", "source": str(ckpt), "max_batch": 1, "precision": "int4", "int4": {"block_size": 32},
             "parity_tolerance": 0.5, "judge": {"vision_precision": "int8-dynamic"}}
    loose = {"max_flip_rate": 0.5, "max_mcc_drop": 2.0, "max_accuracy_drop": 1.0, "max_auc_drop": 1.0}
    dest = compile_cascade(write_config(tmp_path / "c.toml", [stage], tmp_path / "engines", calibration=loose), progress=False)
    vision, prefill = read_manifest(dest).stages[0].graphs
    assert (vision.precision, prefill.precision) == ("int8-dynamic", "int4")
    assert prefill.weight_quant.converted == 2 * 7 + 1 and prefill.weight_quant.embeddings == 1  # 7 Linears a layer + the answer head
    assert vision.accuracy_gate is not None and vision.accuracy_gate == prefill.accuracy_gate and vision.accuracy_gate.quantized_nodes > 0
    imgs = images()
    with load_engine_set(dest) as es:
        judge = es.cascade.stages[0].judge
        ours = judge.run(imgs)
    want = expected(load_model(ckpt, "smolvlm"), smolvlm_processor(ckpt), imgs, judge.spec.prompt, judge.spec.answer_ids)
    p_want = np.exp(log_softmax(want))[:, np.array(judge.spec.answer_yes)].sum(axis=1)
    # Stated tolerance: RTN INT4 (the embedding table too) on random 64-wide weights is the
    # pessimistic case: it moved p(yes) by up to 0.45 on these five images (the INT8 vision tower
    # alone: 0.03). On a real checkpoint the accuracy gate decides.
    dp = np.abs(1 / (1 + np.exp(-ours["yes_logodds"])) - p_want)
    assert dp.max() < 0.5 and dp.mean() < 0.35
