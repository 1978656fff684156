"""transformers reference for ``jaxtok bench decode`` (run by ``torch_ref.run_json`` in an
interpreter with torch + transformers; it needs no jaxtok). argv[1] is the JSON job: the model
file, prompt length, new tokens, batches, dtypes, repeats and vocabulary size. Prints one
``JSON:`` line with prefill and decode tokens/s per (dtype, batch), timed as jaxtok times its
own: best of ``repeats`` rounds after a warm-up, decode rate over the n - 1 steps after the
first token."""
import json, sys, time
import torch
from pathlib import Path
from transformers import AutoModelForCausalLM
job = json.loads(sys.argv[1])
path = Path(job["model"])
out = []
where = ({"pretrained_model_name_or_path": path.parent, "gguf_file": path.name}
         if path.suffix == ".gguf" else {"pretrained_model_name_or_path": path})
base = AutoModelForCausalLM.from_pretrained(**where, dtype=torch.float32).eval()
device = "cuda" if torch.cuda.is_available() else "cpu"
sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
for dtype in job["dtypes"]:
  model = base.to(device=device, dtype=getattr(torch, dtype))
  for b in job["batches"]:
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(100, job["vocab"], (b, job["prompt_len"]), generator=gen).to(device)
    mask = torch.ones_like(ids)
    n = job["new_tokens"]
    best = [float("inf")] * 3  # prefill, generate 1 token, generate n tokens
    with torch.no_grad():
      for rep in range(job["repeats"] + 1):  # first round warms up
        times = []
        for new in (0, 1, n):
          sync()
          t0 = time.perf_counter()
          if new:
            model.generate(ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new,
                           do_sample=False, pad_token_id=0)
          else:
            model(ids, attention_mask=mask, use_cache=True)
          sync()
          times.append(time.perf_counter() - t0)
        if rep:
          best = [min(a, x) for a, x in zip(best, times)]
    steps_s = best[2] - best[1]  # the n - 1 decode steps after the first token
    out.append({"dtype": dtype, "batch": b, "prefill_s": best[0], "generate_s": best[2],
                "prefill_tok_s": b * job["prompt_len"] / best[0],
                "decode_tok_s": b * (n - 1) / steps_s if steps_s > 0 else None})
print("JSON:" + json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(),
                            "device": device, "rows": out}))
