#!/usr/bin/env bash
# Checks fm-worker's NVML GPU probe against nvidia-smi on a machine with an NVIDIA GPU.
# Needs only a C++ compiler there. Exit 0 when both agree on count, model and memory.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp}
g++ -std=c++20 -O1 -I. worker/hardware_probe.cc tests/gpu/probe_main.cc -ldl -o /tmp/fm-probe-gpus
/tmp/fm-probe-gpus | tee "$out/probe.txt"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader,nounits | tee "$out/nvidia-smi.txt"
# Compare: same count, same names, same MiB.
paste -d'|' <(grep '^gpu: ' "$out/probe.txt" | sed 's/^gpu: //; s/ MiB$//') \
            <(sed 's/, /, /' "$out/nvidia-smi.txt") | while IFS='|' read -r probe smi; do
  if [ "$probe" != "$smi" ]; then echo "MISMATCH probe=[$probe] nvidia-smi=[$smi]"; exit 1; fi
  echo "match: $probe"
done
[ "$(grep -c '^gpu: ' "$out/probe.txt")" = "$(wc -l <"$out/nvidia-smi.txt")" ] || { echo "count differs"; exit 1; }
echo "GPU probe agrees with nvidia-smi"
