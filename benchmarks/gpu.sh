#!/usr/bin/env bash
# The GPU figures of BENCHMARKS.md, each step under its own time limit, in three parts:
#   engine       engine overhead (kd against a plain loop): the default recipe, the same with the plain
#                loop's batches gathered as kd's, validation every 10 epochs, a ResNet-18 teacher, both
#                sides compiled, and a profile of each side (about 5 min; 12 at most)
#   torchdistill kdcore against torchdistill (2.5 min at most)
#   liverct      liver CT student against teacher per case at the default volume and at a clinical-size
#                one, float32 and float16 autocast (8 min at most)
#
#   benchmarks/gpu.sh [OUT_DIR [PART...]]   # default benchmarks/results/gpu, every part; PYTHON picks
#                                           # the interpreter
#
# A lent GPU runs one command for at most 10 minutes and sends back at most 8 files: give it one or two
# parts at a time, and pack OUT_DIR (tar) when it holds more.
#
# Needs CUDA, kdcore, the first-party plugins and the `bench` extra (torchdistill). Writes one JSON per
# benchmark and gpu.log (everything printed) under OUT_DIR.
set -u
out=${1:-benchmarks/results/gpu}
py=${PYTHON:-python3}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
log="$out/gpu.log"

step() {  # step NAME SECONDS COMMAND...: run COMMAND under a time limit, its output to the log
    local name=$1 limit=$2
    shift 2
    echo "== $name ($(date -u +%H:%M:%S), limit ${limit}s)" | tee -a "$log"
    timeout "$limit" "$@" 2>&1 | tee -a "$log" | tail -n 14
    echo "== $name: exit ${PIPESTATUS[0]}" | tee -a "$log"
}

shift $(($# > 0 ? 1 : 0))
parts=${*:-engine torchdistill liverct}
wanted() { [[ " $parts " == *" $1 "* ]]; }

"$py" -c 'import torch; print(torch.__version__, torch.cuda.get_device_name())' | tee -a "$log"
if wanted engine; then
    overhead=("$py" benchmarks/engine_overhead.py --device cuda)
    step engine_overhead 150 "${overhead[@]}" --out "$out/engine_overhead.json"
    step engine_overhead_gathered 100 "${overhead[@]}" --plain-batches gathered \
        --out "$out/engine_overhead_gathered.json"
    step engine_overhead_eval10 100 "${overhead[@]}" --eval-every 10 --out "$out/engine_overhead_eval10.json"
    step engine_overhead_resnet18 120 "${overhead[@]}" --teacher resnet18 --epochs 4 \
        --out "$out/engine_overhead_resnet18.json"
    step engine_overhead_compile 150 "${overhead[@]}" --compile --rounds 3 --out "$out/engine_overhead_compile.json"
    # one round of each side under torch.profiler: operator tables, kernel launches and host syncs per step
    step engine_overhead_profile 100 "${overhead[@]}" --rounds 1 --profile "$out" \
        --out "$out/engine_overhead_profile.json"
fi
if wanted torchdistill; then
    step torchdistill 150 "$py" benchmarks/torchdistill_compare.py --device cuda --out "$out/torchdistill.json"
fi
if wanted liverct; then
    for amp in off float16; do
        for volume in "96 96 64" "256 256 128"; do
            name="liverct_${amp}_${volume// /x}"
            # shellcheck disable=SC2086  # the volume is three numbers
            step "$name" 120 "$py" benchmarks/liverct_variants.py --skip-training --device cuda --amp "$amp" \
                --volume $volume --windows-per-pass 32 128 --out "$out/$name.json"
        done
    done
fi
