"""The Qwen-VL judge (families qwen2.5-vl, qwen3-vl) on tiny random-initialised models of the
real classes: the compiled chain (numpy preparation, vision graph, prefill graph; no torch)
against transformers' own processor and forward, at image sizes and prompt lengths other than
the ones the graphs were exported with; the compiled prompt against the processor's; and the
checkpoints and settings the compiler must refuse."""

from __future__ import annotations

import msgspec
import numpy as np
import pytest

pytest.importorskip("tokenizers", exc_type=ImportError)

from streetcascade.compile.pipeline import compile_cascade  # noqa: E402
from streetcascade.runtime import load_engine_set  # noqa: E402
from streetcascade.runtime.vlm_host import assemble  # noqa: E402
from support import SAMPLES, write_config  # noqa: E402
from vlm_support import FAMILIES, QUESTION, load_model, log_softmax, processor_inputs, reference_processor, transformers_logits, with_one_placeholder  # noqa: E402

from streetcascade.config import load_config  # noqa: E402
from streetcascade.errors import CompileError, ConfigError  # noqa: E402

BAR = 1e-3  # the bar on yes/no log-probabilities, FP32


def judge_of(es):
    return es.cascade.stages[0].judge


@pytest.mark.parametrize("family", FAMILIES)
def test_answer_logprobs_equal_transformers_at_other_sizes_and_prompts(tiny_vlm, family):
    """Exported at 224x224-area images and the compiled prompt; run on other image shapes and on
    a prompt of another length (rendered by the processor), one at a time and left-padded in a
    batch: answer log-probabilities within 1e-3 of transformers' forward."""
    ckpt, dest = tiny_vlm(family)
    processor = reference_processor(ckpt, family)
    model = load_model(ckpt, family)
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in [(96, 320, 3), (400, 300, 3), (224, 224, 3)]]
    from streetcascade.runtime.images import decode_image

    images.append(decode_image((SAMPLES / "street-barrier.jpg").read_bytes()))
    with load_engine_set(dest) as es:
        judge = judge_of(es)
        spec = judge.spec
        size = {"shortest_edge": spec.min_pixels, "longest_edge": spec.max_pixels}
        short = "Road work?"
        for question in (spec.prompt, short):
            if question != spec.prompt:  # another prompt length: the processor's prompt ids, same graphs
                ids = processor_inputs(processor, images[0], question, size=size)["input_ids"][0].numpy()
                judge.spec = spec = msgspec.structs.replace(spec, prompt_ids=with_one_placeholder(ids, spec.image_token_id))
                judge.__init__(judge.engines, spec)
            ours = judge.run(images)
            batched = judge.run(images[:2])  # left-padded: different token counts in one prefill
            want = np.concatenate([transformers_logits(model, processor_inputs(processor, im, question, size=size), spec.answer_ids)
                                   for im in images])
            assert np.abs(log_softmax(ours["answer_logits"]) - log_softmax(want)).max() < BAR, question
            assert np.abs(ours["answer_logits"] - want).max() < BAR
            assert np.abs(batched["answer_logits"] - want[:2]).max() < BAR
            yes = np.array(spec.answer_yes)
            p_yes = np.exp(log_softmax(want))[:, yes].sum(axis=1)
            assert np.allclose(1 / (1 + np.exp(-ours["yes_logodds"])), p_yes, atol=1e-4)
    # The comparison had something to compare: the answers move with the image.
    assert np.ptp(log_softmax(want)[:, 0]) > 0.05



@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("system", ["", "You judge street photos."])
def test_compiled_prompt_equals_the_processors(tiny_vlm, tmp_path, family, system):
    from streetcascade.compile.models import get_family

    ckpt, _ = tiny_vlm(family)
    cfg = write_config(tmp_path / "c.toml", [{"name": "judge", "family": family, "source": str(ckpt), "input_size": 224,
                                              "judge": {"prompt": QUESTION, "system": system}}], tmp_path / "engines")
    stage = load_config(cfg).stages[0]
    fam = get_family(family)
    spec, prompt = fam.spec(stage, fam.open(stage, cfg, weights=False))
    processor = reference_processor(ckpt, family)
    image = np.random.default_rng(0).integers(0, 256, (150, 260, 3), dtype=np.uint8)
    want = processor_inputs(processor, image, QUESTION, system=system, size={"shortest_edge": spec.min_pixels, "longest_edge": spec.max_pixels})
    tokens = int(want["image_grid_thw"][0].prod()) // spec.merge_size**2
    assert assemble(spec.prompt_ids, spec.image_token_id, tokens).tolist() == want["input_ids"][0].tolist()
    assert (system in prompt.text) and prompt.text.endswith("assistant\n")
    tok = processor.tokenizer
    assert {tok.decode([i]).strip() for i in spec.answer_ids} == {"yes", "Yes", "no", "No"}
    assert all(tok.decode([i]).strip().lower() == ("yes" if y else "no") for i, y in zip(spec.answer_ids, spec.answer_yes))


@pytest.mark.parametrize("family", FAMILIES)
def test_manifest_records_the_judge(tiny_vlm, family):
    from streetcascade.manifest import read_manifest

    _, dest = tiny_vlm(family)
    entry = read_manifest(dest).stages[0]
    v = entry.vlm
    assert entry.kind == "vlm" and [g.role for g in entry.graphs] == ["vision", "prefill"]
    assert v.vision_tokens == (224 // (v.patch_size * v.merge_size)) ** 2 and v.expected_ms > 0
    assert v.parity.max_abs_logit_error < BAR and v.parity.n_images == 2
    vision, prefill = entry.graphs
    assert vision.io.axis_sizes["tokens"] >= v.vision_tokens and prefill.io.axis_sizes["sequence"] == v.max_tokens
    assert prefill.parity.max_abs_logit_error < BAR and vision.parity.max_abs_prob_error < 1e-4
    assert entry.combine is not None and entry.combine.judge == 1.0


def _stage(tmp_path, family, ckpt, **fields):
    cfg = write_config(tmp_path / "c.toml", [{"name": "judge", "family": family, "source": str(ckpt), **fields}], tmp_path / "engines")
    return cfg, load_config(cfg).stages[0]


@pytest.mark.parametrize("family", FAMILIES)
def test_bad_settings_and_checkpoints_are_refused(tiny_vlm, tmp_path, family):
    from streetcascade.compile.models import get_family

    ckpt, _ = tiny_vlm(family)
    fam = get_family(family)
    _, stage = _stage(tmp_path, family, ckpt, judge={"yes": ["roadwork-yes-please"], "no": ["no"]})
    with pytest.raises(CompileError, match="no single-token spelling of the yes words"):
        fam.graphs(stage)
    _, stage = _stage(tmp_path, family, ckpt, judge={"prompt": "Is there road work? " * 40, "max_prompt_tokens": 64})
    with pytest.raises(CompileError, match="over judge.max_prompt_tokens = 64"):
        fam.graphs(stage)
    other = next(f for f in FAMILIES if f != family)
    _, stage = _stage(tmp_path, other, ckpt)
    with pytest.raises(CompileError, match=f"family {other} takes"):
        compile_cascade(_stage(tmp_path, other, ckpt)[0], progress=False)
    with pytest.raises(ConfigError, match="on both sides"):
        _stage(tmp_path, family, ckpt, judge={"yes": ["yes"], "no": ["yes"]})
    with pytest.raises(CompileError, match="unknown preset"):
        fam.graphs(_stage(tmp_path, family, "random:huge")[1])
    from streetcascade.compile.targets import get_target

    for name in ("tensorrt", "aoti"):  # targets whose engines cannot hold the judge's token axes are refused before any work
        with pytest.raises(CompileError, match=f"the {name} target does not build VLM judge stages"):
            get_target(name).check_precision(_stage(tmp_path, family, ckpt)[1], "cuda")


def test_a_checkpoint_without_chat_template_is_refused(tiny_vlm, tmp_path):
    import shutil

    ckpt, _ = tiny_vlm("qwen3-vl")
    copy = tmp_path / "ckpt"
    shutil.copytree(ckpt, copy)
    (copy / "chat_template.json").unlink()
    from streetcascade.compile.models import get_family

    with pytest.raises(CompileError, match="no chat template"):
        get_family("qwen3-vl").graphs(_stage(tmp_path, "qwen3-vl", copy)[1])


def test_int8_judge_is_gated_against_fp32(tiny_vlm, tmp_path):
    """A lossy precision passes the accuracy gate (yes/no flips vs the FP32 graphs; here without
    labelled data: on the sample photos, FP32 answers as labels); its refusal: test_qwen_vl_int4.py."""
    ckpt, _ = tiny_vlm("qwen3-vl")
    stage = {"name": "judge", "family": "qwen3-vl", "source": str(ckpt), "input_size": 224, "max_batch": 1, "precision": "int8-dynamic",
             "parity_tolerance": 0.5}
    cfg = write_config(tmp_path / "c.toml", [stage], tmp_path / "engines", calibration={"max_flip_rate": 0.5, "max_mcc_drop": 2.0,
                                                                                       "max_accuracy_drop": 1.0, "max_auc_drop": 1.0})
    with load_engine_set(compile_cascade(cfg, progress=False)) as es:
        vision, prefill = es.manifest.stages[0].graphs
        assert vision.precision == "fp32" and vision.accuracy_gate is None
        gate = prefill.accuracy_gate
        assert prefill.precision == "int8-dynamic" and gate.passed and gate.n_images == 12 and gate.quantized_nodes > 0
        assert gate.split.startswith("parity-images")
        assert np.isfinite(judge_of(es).log_odds([np.zeros((64, 64, 3), np.uint8)])).all()
