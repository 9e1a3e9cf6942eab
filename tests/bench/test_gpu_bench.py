"""bench/gpu.py and bench/gpu_check.sh without a GPU: the peer list, the work counted per
image, the budget that skips what does not fit (saying why), the table and the bars read off
it, the command line; and the check script's CPU dry run in a Python where the project is not
installed and three of its dependencies are missing (as on the lent GPU machine)."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from bench import gpu

REPO = Path(__file__).resolve().parents[2]


def test_peers_on_a_gpu_and_on_a_cpu():
    peers, skipped = gpu.peer_list("cuda")
    assert [p.name for p in peers] == ["eager fp16", "eager fp16 + CUDA graph", "streetcascade aoti fp16", "torch.compile default",
                                       "torch.compile reduce-overhead"]
    assert any("max-autotune: opt-in" in s for s in skipped) and any("TensorRT is not installed" in s for s in skipped)
    peers, _ = gpu.peer_list("cuda", max_autotune=True, aoti_autotune=True, installed=("tensorrt", "ort-cuda"))
    names = [p.name for p in peers]
    assert names[-4:] == ["streetcascade aoti fp16 autotune", "torch.compile max-autotune", "streetcascade tensorrt fp16", "streetcascade ort-cuda fp16"]
    assert next(p for p in peers if p.name.endswith("autotune") and p.kind == "aoti").target["autotune"] is True
    peers, skipped = gpu.peer_list("cpu")
    assert [p.name for p in peers] == ["eager fp32", "streetcascade aoti fp32", "torch.compile default"]
    assert "eager fp32 + CUDA graph: needs CUDA" in skipped and "torch.compile reduce-overhead: needs CUDA" in skipped


def test_work_per_image_is_the_cpu_limits_count():
    from bench.cpu_limits import model_gops

    assert gpu.gops_per_image("vits16") == model_gops("vits16")["total"]
    assert 9.0 < gpu.gops_per_image("vits16") < 10.0 and 120.0 < gpu.gops_per_image("vitl16") < 130.0  # ViT-L/16 at 224: ~61 GMAC


def test_budget_skips_what_does_not_fit_and_learns_from_what_it_measured():
    lines = []
    budget = gpu.Budget(100.0, lines.append)
    aoti, compile_ = gpu.Peer("streetcascade aoti fp16", "aoti", guess="aoti"), gpu.Peer("torch.compile default", "compile", guess="compile")
    assert budget.allows(gpu.Peer("eager fp16", "eager"), "vitl16")  # cheap: always
    assert budget.allows(aoti, "vitl16")  # guess 90 s of 100
    budget.t0 -= 80  # 80 s spent
    assert not budget.allows(compile_, "vitl16")
    assert lines == ["  skipped torch.compile default: needs ~70 s to build, 20 s left of vitl16's 100 s budget"]
    budget.record("compile", 12.0)
    assert budget.allows(compile_, "vitl16")


def test_rows_table_and_bars():
    times = {"eager fp16": np.full(10, 10.0), "eager fp16 + CUDA graph": np.full(10, 2.0), "streetcascade aoti fp16": np.full(10, 1.25)}
    rows = gpu.result_rows("vits16", 1, times, {"eager fp16 + CUDA graph": 1.5, "streetcascade aoti fp16": 0.94}, {"streetcascade aoti fp16": 1e-3},
                           {"eager fp16 + CUDA graph": True, "streetcascade aoti fp16": True}, 9.4, 700.0, "NVIDIA H200")
    by = {r["variant"]: r for r in rows}
    assert by["streetcascade aoti fp16"]["vs_eager_graph"] == pytest.approx(1.6) and by["streetcascade aoti fp16"]["vs_eager"] == pytest.approx(8.0)
    assert by["streetcascade aoti fp16"]["tflops"] == pytest.approx(9.4 / 0.94)  # GOP per ms = TFLOP/s
    assert by["eager fp16"]["gpu_ms"] is None and by["eager fp16"]["tflops"] is None
    lines = gpu.table(rows)
    assert lines[0].startswith("| model | batch | variant | e2e median ms") and len(lines) == 5
    assert lines[4] == "| vits16 | 1 | streetcascade aoti fp16 | 1.250 | 1.250 | 0.940 | 10.0 | 1.4 | 8.00 | 1.60 | yes |"
    assert lines[2].endswith("| 10.000 | 10.000 | — | — | — | 1.00 | 0.20 | — |")
    (bar,) = gpu.bar_lines(rows)
    assert bar.startswith("bar: ViT-S/16 batch 1 end to end, aoti fp16 vs eager fp16 + CUDA graph: 1.60x (bar >= 1.4x): met")
    big = gpu.result_rows("vitl16", 8, {"eager fp16": np.full(4, 30.0), "streetcascade aoti fp16": np.full(4, 6.0)},
                          {"streetcascade aoti fp16": 5.0}, {}, {}, 125.7, 700.0, "NVIDIA H200")
    assert gpu.bar_lines(big)[0].startswith("bar: ViT-L/16 batch 8 GPU-only, aoti fp16: 28.7% of the same-run bf16 GEMM (bar >= 35%): NOT met")


def test_command_line():
    args = gpu.parse_args(["--models", "vits16", "--batch", "1,8", "--budget-s", "vits16=80", "--max-autotune"])
    assert args.models == ["vits16"] and args.batch == [1, 8] and args.budget_s == {"vits16": 80.0} and args.max_autotune
    for bad, why in ((["--models", "vitx"], "unknown vitx"), (["--batch", "1,x"], "comma-separated"), (["--batch", "0"], "from 1 to 64"),
                     (["--budget-s", "vits16"], "MODEL=SECONDS"), (["--budget-s", "vits16=soon"], "not a number"), (["--runs", "2"], "at least 4")):
        with pytest.raises(SystemExit):
            gpu.parse_args(bad)


def test_dry_run_prints_the_plan(capsys):
    assert gpu.main(["--dry-run", "--models", "vits16,vitl16"]) == 0
    out = capsys.readouterr().out
    assert "peers: eager fp16, eager fp16 + CUDA graph, streetcascade aoti fp16" in out and "vitl16: 125.68 GOP/image" in out


# -- the check script, as the lent machine runs it --

def _wheel_from_installed(dist: str, site: Path, dest: Path) -> Path:
    """A wheel of an installed distribution (its RECORD's files), standing in for the carried
    wheelhouse (`make gpu-wheelhouse` downloads the real ones for the GPU machine's Python)."""
    norm = dist.replace("-", "_").lower()
    (info,) = [p for p in site.glob("*.dist-info") if p.name.split("-")[0].lower() == norm]
    version = info.name[len(info.name.split("-")[0]) + 1 : -len(".dist-info")]
    tag = next(line.split(":", 1)[1].strip() for line in (info / "WHEEL").read_text().splitlines() if line.startswith("Tag:"))
    out = dest / f"{info.name.split('-')[0]}-{version}-{tag}.whl"
    with zipfile.ZipFile(out, "w") as z:
        for line in (info / "RECORD").read_text().splitlines():
            rel = line.split(",")[0]
            if rel and not rel.startswith("..") and (site / rel).is_file():
                z.write(site / rel, rel)
    return out


def _bare_site(tmp_path: Path, hidden: tuple[str, ...]) -> Path:
    """This environment's site-packages without `hidden` (and without .pth files: no editable
    install finder), for a Python run with -S and PYTHONPATH=<it>."""
    import msgspec

    site = Path(msgspec.__file__).resolve().parents[1]
    bare = tmp_path / "site"
    bare.mkdir()
    for entry in site.iterdir():
        if not entry.name.startswith(hidden) and entry.suffix != ".pth" and entry.name != "__pycache__":
            (bare / entry.name).symlink_to(entry)
    return bare


@pytest.mark.slow
def test_gpu_check_cpu_dry_run_in_a_python_without_the_project(tmp_path):
    """The lent machine's situation: a Python with torch, transformers, pytest, but neither
    streetcascade installed nor msgspec / tomlkit / tomli-w. The check installs those three from
    the wheelhouse, imports the checkout as it is (pytest collects the GPU tests: they skip,
    saying why), prints the bench's plan, and says what was missing in one line."""
    import msgspec

    site = Path(msgspec.__file__).resolve().parents[1]
    bare = _bare_site(tmp_path, ("__editable__", "streetcascade", "msgspec", "tomlkit", "tomli_w"))
    wheels = tmp_path / "wheelhouse"
    wheels.mkdir()
    for dist in ("msgspec", "tomlkit", "tomli-w"):
        _wheel_from_installed(dist, site, wheels)
    python = tmp_path / "bin" / "python3"
    python.parent.mkdir()
    python.write_text(f"#!/bin/sh\nexec {sys.executable} -S \"$@\"\n")  # -S: no site-packages, no .pth: only PYTHONPATH
    python.chmod(0o755)
    env = {**os.environ, "PYTHON": str(python), "PYTHONPATH": str(bare), "GPU_WHEELHOUSE": str(wheels), "GPU_CHECK_DEPS": str(tmp_path / "deps")}
    probe = subprocess.run([str(python), "-c", "import streetcascade"], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert probe.returncode != 0  # really not installed
    out = tmp_path / "out"
    r = subprocess.run(["bash", str(REPO / "bench" / "gpu_check.sh"), str(out), "--cpu-dry-run"], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    steps = (out / "steps.txt").read_text()
    assert sorted(p.name for p in out.iterdir()) == ["gpu.md", "pytest.txt", "steps.txt"]  # the device tool brings back at most 8
    (deps,) = [line for line in steps.splitlines() if line.startswith("dependencies: ")]
    assert deps.startswith("dependencies: required and missing here: msgspec, tomlkit, tomli-w; installed from wheelhouse/ (pip --target)")
    assert "still missing: nothing required" in deps and "streetcascade importable from the checkout" in deps
    pytest_out = (out / "pytest.txt").read_text()
    assert "needs an NVIDIA GPU" in pytest_out and " skipped" in pytest_out and "error" not in pytest_out.lower()
    assert "peers: eager fp16, eager fp16 + CUDA graph, streetcascade aoti fp16" in (out / "gpu.md").read_text()
    assert "done (cpu dry run)" in steps and not (out / ".deps").exists()


def test_checkout_env_unzips_when_there_is_no_pip(tmp_path, monkeypatch):
    from bench import checkout_env

    import tomli_w

    wheel = _wheel_from_installed("tomli-w", Path(tomli_w.__file__).resolve().parents[1], tmp_path)
    monkeypatch.setenv("GPU_CHECK_NO_PIP", "1")
    assert checkout_env.install([wheel], tmp_path / "deps") == "unzipped"
    assert (tmp_path / "deps" / "tomli_w" / "__init__.py").exists()
    assert checkout_env.wheels_for(tmp_path, "tomli-w") == [wheel] and checkout_env.wheels_for(tmp_path, "tomlkit") == []


def test_the_checkout_imports_without_an_install(tmp_path):
    """streetcascade/__init__.py finds its subpackages in the checkout's folders (what the GPU
    check relies on), with the checkout first on sys.path as pytest puts it, in a Python where
    the project is not installed."""
    bare = _bare_site(tmp_path, ("__editable__", "streetcascade"))
    code = "import sys; sys.path.insert(0, '.'); import streetcascade.compile.targets.aoti as m, streetcascade.runtime.classifier; print(m.__file__)"
    r = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(bare)})
    assert r.returncode == 0, r.stderr[-2000:]
    assert Path(r.stdout.strip()) == REPO / "compile" / "targets" / "aoti.py"
    r = subprocess.run([sys.executable, "-S", "-c", "import streetcascade"], capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(bare)})
    assert r.returncode != 0  # the check above did not lean on an install
