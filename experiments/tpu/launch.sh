#!/usr/bin/env bash
# Run one jaxtok experiment on every worker of a Cloud TPU VM slice (the same command everywhere;
# jaxtok.runtime.initialize() connects the processes through jax.distributed).
# Usage: experiments/tpu/launch.sh TPU_NAME ZONE EXP [extra jaxtok run args...]
#   e.g. experiments/tpu/launch.sh my-v5e-16 us-west4-a lm --set train.steps=20000
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: $0 TPU_NAME ZONE EXP [jaxtok run args...]" >&2
  exit 2
fi
tpu="$1"; zone="$2"; exp="$3"; shift 3
repo="${JAXTOK_REPO:-https://github.com/jaxtok/jaxtok.git}"
out="${JAXTOK_OUT:-runs}"   # a gs:// path keeps checkpoints when the slice is recycled
cmd="set -e; [ -d jaxtok ] || git clone -q $repo jaxtok; cd jaxtok; git pull -q;
python3.12 -m venv .venv; . .venv/bin/activate; pip install -q -e . 'jax[tpu]';
jaxtok run $exp --preset pod --out $out $*"
gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all --command "$cmd"
