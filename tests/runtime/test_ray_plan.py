"""The [ray] table against an engine set, before any Ray cluster: errors name the field, the
first stage is batched by default, a GPU replica's budget is its fraction of the GPU's budget,
and a part of an engine set loads alone (what each replica does)."""

from __future__ import annotations

import msgspec
import numpy as np
import pytest
from support import REPO, SAMPLES, run_python

from streetcascade.errors import BudgetExceeded, ConfigError, EngineMismatch
from streetcascade.manifest import read_manifest
from streetcascade.miner.config import load_miner_config
from streetcascade.runtime.plan import GIB, MIB
from streetcascade.runtime.ray_plan import RayConfig, RayStageConfig, check_replica_budgets, describe_replicas, plan_replicas
from streetcascade.settings import RuntimeConfig

MINER = """
[[hotkeys]]
port = 8091
hotkey_file = "hk.json"
[engine]
engine = "{engine}"
"""


def miner_toml(tmp_path, engine, extra: str = ""):
    path = tmp_path / "miner.toml"
    path.write_text(MINER.format(engine=engine) + extra)
    return path


@pytest.mark.parametrize("extra,field", [
    ("[ray.stages.stage1]\nnum_gpus = 2\n", "$.ray.stages.stage1.num_gpus"),
    ("[ray.stages.stage1]\nreplicas = 0\n", "$.ray.stages.stage1.replicas"),
    ("[ray.stages.stage1]\nreplica = 2\n", "$.ray.stages.stage1"),
    ("[ray]\napp_name = \"a b\"\n", "$.ray.app_name"),
    ("[ray]\ncall_timeout_s = 0\n", "$.ray.call_timeout_s"),
])
def test_bad_ray_table_names_the_field(tmp_path, extra, field):
    with pytest.raises(ConfigError, match=field.replace("$", r"\$").replace(".", r"\.")):
        load_miner_config(miner_toml(tmp_path, "engines/x", extra))


def test_plan_resolves_the_table_against_the_engine_set(tiny_ocr_engine_dir):
    manifest = read_manifest(tiny_ocr_engine_dir)
    plans = plan_replicas(manifest, RayConfig(stages={"ocr": RayStageConfig(replicas=2, num_cpus=2.5, slots=3)}), RuntimeConfig(intra_op_threads=0))
    stage1, ocr = plans
    assert (stage1.deployment, stage1.max_batch_size, stage1.batched, stage1.runtime.slots) == ("stage-stage1", 2, True, 1)
    assert (ocr.replicas, ocr.batched, ocr.runtime.slots, ocr.runtime.intra_op_threads) == (2, False, 3, 3)  # threads: the CPUs reserved
    assert stage1.runtime.intra_op_threads == 1 and stage1.runtime.batch_window_ms == 0.0
    table = describe_replicas(plans)
    assert "stage-ocr" in table and "2/5ms" in table and "reserved on the cluster: 6 CPU(s), 0 GPU(s) in 3 replica(s)" in table
    # Each replica plans only its own stage's engines.
    assert {line.stage for line in stage1.memory.lines} == {"stage1"} and {line.stage for line in ocr.memory.lines} == {"ocr"}


def test_plan_refuses_what_cannot_work(tiny_ocr_engine_dir):
    manifest = read_manifest(tiny_ocr_engine_dir)
    with pytest.raises(ConfigError, match=r"ray\.stages\.nope: the engine set has no stage 'nope'; its stages: stage1, ocr"):
        plan_replicas(manifest, RayConfig(stages={"nope": RayStageConfig()}))
    with pytest.raises(ConfigError, match=r"ray\.stages\.stage1\.max_ongoing_requests \(4\) is below max_batch_size \(8\)"):
        plan_replicas(manifest, RayConfig(stages={"stage1": RayStageConfig(max_batch_size=8, max_ongoing_requests=4)}))
    gpu = msgspec.structs.replace(manifest, target=msgspec.structs.replace(manifest.target, device="cuda", gpu_name="NVIDIA L4"))
    with pytest.raises(ConfigError, match=r"ray\.stages\.ocr\.num_gpus: the engine set runs on a GPU \(NVIDIA L4\)"):
        plan_replicas(gpu, RayConfig(stages={"stage1": RayStageConfig(num_gpus=0.5)}))


def test_gpu_replica_budget_is_its_fraction_of_the_budget(tiny_ocr_engine_dir):
    manifest = read_manifest(tiny_ocr_engine_dir)
    gpu = msgspec.structs.replace(manifest, target=msgspec.structs.replace(manifest.target, device="cuda"))
    runtime = RuntimeConfig(budget_bytes=24 * GIB)
    plans = plan_replicas(gpu, RayConfig(stages={"stage1": RayStageConfig(num_gpus=0.25), "ocr": RayStageConfig(num_gpus=0.5)}), runtime)
    assert [p.memory.budget_bytes for p in plans] == [6 * GIB, 12 * GIB]
    check_replica_budgets(plans, "m.toml")  # the tiny engines fit
    ocr_needs = plans[1].memory.total_bytes  # its engines + one CUDA context per replica process
    small = RuntimeConfig(budget_bytes=int(ocr_needs / 0.5) - MIB)  # half of it is just below what the OCR replica needs
    plans = plan_replicas(gpu, RayConfig(stages={"stage1": RayStageConfig(num_gpus=0.5), "ocr": RayStageConfig(num_gpus=0.5)}), small)
    with pytest.raises(BudgetExceeded, match=r"a replica of stage ocr does not fit its budget \(0\.5 of the \[runtime\] budget"):
        check_replica_budgets(plans, "m.toml")
    plans = plan_replicas(gpu, RayConfig(stages={"stage1": RayStageConfig(num_gpus=0.5), "ocr": RayStageConfig(num_gpus=0.6)}), small)
    check_replica_budgets(plans, "m.toml")


def test_one_stage_of_an_engine_set_loads_alone(tiny_ocr_engine_dir):
    from streetcascade.runtime import decode_image, load_engine_set

    rgb = decode_image((SAMPLES / "street-barrier.jpg").read_bytes())
    with load_engine_set(tiny_ocr_engine_dir) as whole, load_engine_set(tiny_ocr_engine_dir, only_stages=["stage1"]) as part:
        assert [s.name for s in part.cascade.stages] == ["stage1"] and [s.name for s in part.manifest.stages] == ["stage1"]
        assert {line.stage for line in part.plan.lines} == {"stage1"}
        np.testing.assert_allclose(part.cascade.stages[0].score([rgb]), whole.cascade.stages[0].score([rgb]), rtol=0, atol=1e-7)
    with pytest.raises(EngineMismatch, match="no stage.*vlm in this engine set; it has stage1, ocr"):
        load_engine_set(tiny_ocr_engine_dir, only_stages=["vlm"])


def test_ray_deploy_dry_run_prints_the_plan(tmp_path, tiny_ocr_engine_dir, capsys):
    from streetcascade.cli import main

    path = miner_toml(tmp_path, tiny_ocr_engine_dir, "[ray.stages.stage1]\nreplicas = 2\nnum_cpus = 0.5\n")
    assert main(["ray-deploy", "--config", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "stage-stage1" in out and "stage-ocr" in out and "reserved on the cluster: 2 CPU(s)" in out
    # Without a cluster address, a real deploy says where to give one (exit code 2: config).
    assert main(["ray-deploy", "--config", str(path)]) == 2
    assert "pass --address" in capsys.readouterr().err


def test_ray_deploy_refuses_a_replica_over_its_budget_before_ray(tmp_path, tiny_ocr_engine_dir, capsys):
    """The plan ray-deploy prints is budget-checked (checked_plans): even --dry-run refuses it."""
    from streetcascade.cli import main

    path = miner_toml(tmp_path, tiny_ocr_engine_dir, "[runtime]\nbudget_bytes = 1024\n")
    assert main(["ray-deploy", "--config", str(path), "--dry-run"]) == BudgetExceeded.exit_code
    assert "a replica of stage stage1 does not fit its budget (the [runtime] budget" in capsys.readouterr().err


def test_without_ray_installed_the_miner_says_how_to_install_it(tmp_path):
    path = miner_toml(tmp_path, "fake", '[[chain.static_neurons]]\nhotkey = "x"\n')
    path.write_text(path.read_text().replace('engine = "fake"', 'engine = "fake"\nray_address = "auto"').replace("[[chain.", "[chain]\nmetagraph = \"static\"\n[[chain."))
    code = f"""
import sys
sys.modules['ray'] = None
sys.path.insert(0, {str(REPO / 'tests')!r})
from streetcascade.errors import BackendUnavailable
from streetcascade.miner.cli import build_cascade
from streetcascade.miner.config import load_miner_config
try:
    build_cascade(load_miner_config({str(path)!r}))
except BackendUnavailable as exc:
    print('BackendUnavailable', exc.exit_code, exc)
"""
    r = run_python(code)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("BackendUnavailable 7 Ray Serve is not installed here") and "streetcascade[ray]" in r.stdout


def test_the_ray_modules_import_without_heavy_packages():
    pytest.importorskip("ray", exc_type=ImportError)
    block = "import sys\nfor name in ('torch', 'transformers', 'onnx', 'onnxscript', 'safetensors'):\n    sys.modules[name] = None\n"
    r = run_python(block + "import streetcascade.runtime.ray_app, streetcascade.runtime.ray_stage, streetcascade.miner.ray_deploy\nprint('ok')")
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().endswith("ok")
