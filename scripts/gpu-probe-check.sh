#!/usr/bin/env bash
# Checks fm-worker's NVML GPU probe and its GPU assignment against nvidia-smi on a
# machine with an NVIDIA GPU. Needs only a C++ compiler there. Exit 0 when both agree on
# count, model, memory and UUID, and one-GPU tasks are given distinct devices that
# nvidia-smi knows (and, with CUDA_VISIBLE_DEVICES set to one, sees only that one where
# nvidia-smi honours it through the CUDA runtime: not checked, nvidia-smi lists all).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp}
g++ -std=c++20 -O1 -I. worker/hardware_probe.cc worker/gpus.cc schemas/model.cc tests/gpu/probe_main.cc -ldl \
  -o /tmp/fm-probe-gpus
/tmp/fm-probe-gpus | tee "$out/probe.txt"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader,nounits | tee "$out/nvidia-smi.txt"
nvidia-smi --query-gpu=uuid --format=csv,noheader | tee "$out/nvidia-smi-uuids.txt"
# Compare: same count, same names, same MiB.
paste -d'|' <(grep '^gpu: ' "$out/probe.txt" | sed 's/^gpu: //; s/ MiB$//') \
            <(sed 's/, /, /' "$out/nvidia-smi.txt") | while IFS='|' read -r probe smi; do
  if [ "$probe" != "$smi" ]; then echo "MISMATCH probe=[$probe] nvidia-smi=[$smi]"; exit 1; fi
  echo "match: $probe"
done
n=$(wc -l <"$out/nvidia-smi.txt")
[ "$(grep -c '^gpu: ' "$out/probe.txt")" = "$n" ] || { echo "count differs"; exit 1; }
# Assignment: n one-GPU tasks get n distinct UUIDs, each one nvidia-smi lists; one more gets none.
grep '^assign: ' "$out/probe.txt" | awk '{print $4}' >"$out/assigned.txt"
[ "$(head -n "$n" "$out/assigned.txt" | sort -u | wc -l)" = "$n" ] || { echo "a GPU was given twice"; exit 1; }
[ "$(tail -n 1 "$out/assigned.txt")" = none ] || { echo "a task got a GPU beyond the count"; exit 1; }
head -n "$n" "$out/assigned.txt" | while read -r uuid; do
  grep -qx "$uuid" "$out/nvidia-smi-uuids.txt" || { echo "assigned $uuid, which nvidia-smi does not list"; exit 1; }
  nvidia-smi --id="$uuid" --query-gpu=uuid --format=csv,noheader | grep -qx "$uuid" ||
    { echo "nvidia-smi --id=$uuid does not select it"; exit 1; }
  echo "assigned: $uuid"
done
echo "GPU probe and assignment agree with nvidia-smi"
