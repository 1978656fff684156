"""transformers reference for the ``speculative`` experiment and ``jaxtok bench speculative``
(run by ``torch_ref.run_json`` in an interpreter with torch + transformers; it needs no jaxtok).
argv[1] is the JSON job: the model file, the prompts' token ids per workload, new tokens, EOS id
and prompt lookup's draft length. HF greedy and prompt-lookup generate
(``prompt_lookup_num_tokens``, ``max_matching_ngram_size`` 2 as our PLD) on our token ids, the
same GGUF dequantised to fp32: per prompt greedy then PLD (adjacent runs see the same load),
after one untimed warm-up request per mode. Tokens past new_tokens (HF's PLD can overshoot
max_new_tokens) are not counted. Prints one ``JSON:`` line with tokens/s and outputs per (mode,
workload)."""
import json
import os  # OMP_WAIT_POLICY comes from torch_ref.run_json
import sys
import time
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM

transformers.utils.logging.disable_progress_bar()
job = json.loads(sys.argv[1])
path = Path(job["model"])
where = ({"pretrained_model_name_or_path": path.parent, "gguf_file": path.name}
         if path.suffix == ".gguf" else {"pretrained_model_name_or_path": path})
model = AutoModelForCausalLM.from_pretrained(**where, dtype=torch.float32).eval()
new = job["new_tokens"]
modes = {"greedy": {}, "pld": {"prompt_lookup_num_tokens": job["pld_tokens"]}}


def gen(ids, extra):
  x = torch.tensor([ids])
  with torch.no_grad():
    out = model.generate(x, attention_mask=torch.ones_like(x), do_sample=False,
                         max_new_tokens=new, pad_token_id=0, eos_token_id=job["eos_id"],
                         **extra)
  return out[0, x.shape[1]:].tolist()[:new]


first = next(iter(job["prompts"].values()))[0]
for extra in modes.values():  # warm-up: one untimed request per mode
  gen(first, extra)
rows = []
for w, prompts in job["prompts"].items():
  stat = {m: {"tokens": 0, "wall": 0.0, "outputs": []} for m in modes}
  for ids in prompts:
    for mode, extra in modes.items():
      t0 = time.perf_counter()
      toks = gen(ids, extra)
      stat[mode]["wall"] += time.perf_counter() - t0
      stat[mode]["tokens"] += len(toks)
      stat[mode]["outputs"].append(toks)
  rows += [{"mode": m, "workload": w, "tokens_per_s": s["tokens"] / s["wall"],
            "outputs": s["outputs"]} for m, s in stat.items()]
print("JSON:" + json.dumps({"torch": torch.__version__, "omp_wait": os.environ["OMP_WAIT_POLICY"],
                            "transformers": transformers.__version__,
                            "threads": torch.get_num_threads(), "rows": rows}))
