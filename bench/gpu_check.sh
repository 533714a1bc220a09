#!/usr/bin/env bash
# GPU check: run on a machine with an NVIDIA GPU, from the repository root. Prints the GPU, runs the
# CUDA-marked tests, the CUDA vs CPU output differences with TF32 on and off and in bf16 and the
# model's own forward/training rates (bench/cuda_parity.py), PNG decoding vs threads
# (bench/decode_threads.py), /predict's stream taken apart (bench/pipeline.py), and the benchmark
# with ORCA_DEVICE=cuda, then whole active-learning rounds at scale (default 10,000 unlabeled and
# 5,000 labeled clips: $ROUND_ARGS), bf16 against fp32 training (bench/precision_check.py), and the
# spectrogram renderer on the device (bench/audio_gpu.py: its pixels against the 2020 PNGs, samples to
# pixels and mp3 to model input in clips/s) with /predict from $AUDIO_CLIPS mp3 clips (default 4096).
#   bash bench/gpu_check.sh [extra bench.run arguments, e.g. --quick or --unlabeled 1024]
#   ROUND_ARGS="--unlabeled 2000 --labeled 1000 --rounds 2" bash bench/gpu_check.sh --quick
#   STEPS="tests rounds" bash bench/gpu_check.sh     # only these steps (a lent machine's minutes are few)
# Steps, in order: tests audio parity decode pipeline bench rounds precision ($STEPS, default all of them).
# Python: $PY, else .venv/bin/python (`make setup`), else python3. Where TensorFlow is not installed
# the benchmark times this service alone (no reference, no speed-up; it says so).
# Results go to bench/results-cuda/ (results.json, results.png, logs).
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PY:-}" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
status=0
STEPS=" ${STEPS:-tests audio parity decode pipeline bench rounds precision} "
want() { [[ "$STEPS" == *" $1 "* ]]; }

echo "== GPU"
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv
else
    echo "nvidia-smi not found: this is not a GPU machine"; exit 2
fi
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')" || exit 2

if want tests; then
    echo "== pytest -m cuda"
    "$PY" -m pytest -q -m cuda -p no:cacheprovider
    rc=$?
    # exit code 5 = no tests collected (no cuda-marked tests): not a failure
    if [ $rc -ne 0 ] && [ $rc -ne 5 ]; then status=$rc; fi
fi

if want audio; then
    echo "== the spectrogram renderer on the device: pixels against the 2020 PNGs, samples->pixels, mp3->input"
    "$PY" -m bench.audio_gpu --device cuda --out bench/results-cuda/audio_gpu.json || status=$?
    echo "== /predict from ${AUDIO_CLIPS:=4096} mp3 clips with ORCA_DEVICE=cuda (new process, new model)"
    ORCA_DEVICE=cuda "$PY" -m bench.run --out bench/results-cuda-audio --no-reference --cold-pairs 0 \
        --unlabeled 16 --labeled 8 --epochs 1 --rounds 0 --audio-clips "$AUDIO_CLIPS" || status=$?
fi

if want parity; then
    echo "== CUDA vs CPU outputs (TF32 on/off, bf16)"
    "$PY" -m bench.cuda_parity || status=$?
fi

if want decode; then
    echo "== PNG decoding vs threads (what feeds /predict on the GPU), glibc's defaults, then as the service sets it"
    "$PY" -m bench.decode_threads --malloc default || status=$?
    "$PY" -m bench.decode_threads --malloc kept || status=$?
fi

if want pipeline; then
    echo "== /predict's scoring stream taken apart (decode only, score only, both), batch 32 and 64"
    "$PY" -m bench.pipeline --images 1024 --batch 32 || status=$?
    "$PY" -m bench.pipeline --images 1024 --batch 64 || status=$?
fi

if want bench; then
    echo "== benchmark with ORCA_DEVICE=cuda"
    # one cold run is enough there (no TensorFlow: no reference to pair with); the device's minutes are few
    ORCA_DEVICE=cuda "$PY" -m bench.run --out bench/results-cuda --cold-pairs 0 "$@" || status=$?
fi

if want rounds; then
    echo "== whole rounds at scale with ORCA_DEVICE=cuda: ${ROUND_ARGS:=--unlabeled 10000 --labeled 5000 --epochs 2 --rounds 2}"
    # shellcheck disable=SC2086  (word splitting of ROUND_ARGS is intended)
    ORCA_DEVICE=cuda "$PY" -m bench.run --out bench/results-cuda-rounds --cold-pairs 0 $ROUND_ARGS || status=$?
fi

if want precision; then
    echo "== bf16 against fp32 training, seeded, full size"
    "$PY" -m bench.precision_check --device cuda --rows 607 --cols 617 --epochs 10 --seeds 0,1,2,3,4 \
        --out bench/results-cuda/precision_check.json || status=$?
fi

echo "== GPU after the run"
nvidia-smi --query-gpu=name,memory.total,memory.used --format=csv
exit $status
