"""Run inside a throw-away AutoAWQ install (tests/compile/test_int4_autoawq.py puts it on
PYTHONPATH): quantize a float checkpoint with real AutoAWQ on the CPU, save it, and write
AutoAWQ's own view of it for the test to compare with: each layer's `dequantize_gemm` and the
logits of the model with AutoAWQ's WQLinear_GEMM layers (their naive CPU path, fp16).

    python autoawq_run.py FLOAT_DIR OUT_DIR IDS.npy GROUP
"""

import sys
import warnings

warnings.filterwarnings("ignore")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from awq import AutoAWQForCausalLM  # noqa: E402
from awq.modules.linear.gemm import WQLinear_GEMM  # noqa: E402
from awq.utils.module import set_op_by_name  # noqa: E402
from awq.utils.packing_utils import dequantize_gemm  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

src, dst, ids_path, group = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
torch.manual_seed(0)
model = AutoAWQForCausalLM.from_pretrained(src, dtype=torch.float32)
# Pre-tokenized calibration samples (no dataset download); AutoAWQ drops samples longer than max_calib_seq_len.
calib = [torch.randint(0, 256, (32,)).tolist() for _ in range(8)]
model.quantize(None, quant_config={"zero_point": True, "q_group_size": group, "w_bit": 4, "version": "GEMM"}, calib_data=calib,
               max_calib_seq_len=32, max_calib_samples=8)
model.save_quantized(dst)

# from_quantized wants IPEX on a CPU: build the same model from AutoAWQ's own layer class instead.
ref = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float16).eval()
for name, module in list(ref.named_modules()):
    if isinstance(module, torch.nn.Linear) and name != "lm_head":
        set_op_by_name(ref, name, WQLinear_GEMM.from_linear(module, 4, group, init_only=True))
ref.load_state_dict(load_file(f"{dst}/model.safetensors"), strict=True)
ids = torch.from_numpy(np.load(ids_path))
with torch.no_grad():
    logits = ref(input_ids=ids).logits[:, -1, :].float().numpy()
weights = {f"w:{name}": dequantize_gemm(m.qweight, m.qzeros, m.scales, 4, group).float().numpy()
           for name, m in ref.named_modules() if isinstance(m, WQLinear_GEMM)}
np.savez(f"{dst}/autoawq_reference.npz", logits=logits, **weights)
print(f"quantized {len(weights)} layers")
