"""The online side must import and run with torch, transformers and onnx absent."""

from support import run_python

BLOCK = "import sys\nfor name in ('torch', 'transformers', 'onnx', 'onnxscript', 'safetensors'):\n    sys.modules[name] = None\n"


def test_runtime_imports_without_heavy_packages():
    r = run_python(BLOCK + "import streetcascade.runtime, streetcascade.runtime.backends.onnxruntime, streetcascade.cli\nprint('ok')")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"


def test_engine_set_loads_and_classifies_without_heavy_packages(tiny_engine_dir):
    code = BLOCK + f"""
from streetcascade.runtime import load_engine_set, decode_image
from support import SAMPLES
with load_engine_set({str(tiny_engine_dir)!r}) as es:
    d = es.cascade.classify(decode_image((SAMPLES / 'street-barrier.jpg').read_bytes()))
    print(round(d.probability, 6), d.stage)
import sys
assert 'torch' not in [m for m, v in sys.modules.items() if v is not None]
"""
    from support import REPO

    r = run_python(f"import sys; sys.path.insert(0, {str(REPO / 'tests')!r})\n" + code)
    assert r.returncode == 0, r.stderr
    p, stage = r.stdout.split()
    assert 0.0 <= float(p) <= 1.0 and stage == "stage1"


def test_blocking_works():
    """Guard against a vacuous pass: importing torch must fail under the block."""
    r = run_python(BLOCK + "import torch")
    assert r.returncode != 0 and "ModuleNotFoundError" in r.stderr or "ImportError" in r.stderr
