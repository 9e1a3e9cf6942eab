import subprocess
import sys

MODULES = ["augment", "challenges", "datasets", "evaluate", "hard_cases", "metrics", "report", "reward", "tune"]


def test_calibration_imports_without_torch_cv2_or_matplotlib():
    code = (
        "import sys\n"
        "for name in ('torch', 'torchvision', 'cv2', 'matplotlib', 'fiftyone', 'transformers'):\n"
        "    sys.modules[name] = None\n"
        + "".join(f"import streetcascade.calibration.{m}\n" for m in MODULES)
        + "assert 'pyarrow' not in sys.modules, 'pyarrow must load only inside the parquet reader'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
