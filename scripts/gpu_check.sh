#!/usr/bin/env bash
# seg's GPU check: train on the GPU (Keras on JAX), benchmark CUDA inference, compare CUDA and CPU masks, and
# run a Zarr volume through one GPU worker. One run, under 8 minutes on one GPU; figures go to $OUT_DIR.
#
# Run in the repository root of a machine with one NVIDIA GPU:
#   MODEL=path/to/model.onnx ISBI=path/to/isbi2012 bash scripts/gpu_check.sh
# MODEL is an exported seg model (export needs TensorFlow, which GPU machines often lack: export it elsewhere
# and bring the file; its .fp16.onnx and .u8.onnx siblings are benchmarked too when present). ISBI is the
# dataset folder. BATCHES (default 1,8,32), STREAMS (default 1,auto: one session, and what seg infer runs)
# and IMAGES (per timed pass, default 64) size the benchmark.
#
# Needs, beyond PyTorch / JAX with CUDA / onnx / numpy: keras>=3.15 (+ namex, optree, ml-dtypes, h5py),
# onnxruntime-gpu>=1.31 with CUDA 13 and cuDNN 9 libraries (the nvidia-* wheels PyTorch cu13x brings do),
# typer, rich, pillow, tifffile, pyyaml, dask[distributed], zarr>=3.1, numcodecs, opencv-python-headless,
# matplotlib, scikit-image, and seg itself
# (installed below from this checkout without dependencies). CHECK_PROVIDER=cpu runs the same steps on a CPU
# (to try the script itself; the figures then mean nothing for a GPU).
set -euo pipefail
PYTHON=${PYTHON:-python3}
PROVIDER=${CHECK_PROVIDER:-cuda}
OUT_DIR=${OUT_DIR:-gpu-check}
BUDGET=${TRAIN_BUDGET:-120}; CPU_BUDGET=${CPU_BUDGET:-60}; IMAGES=${IMAGES:-64}; LARGE=${LARGE:-8192}
BATCHES=${BATCHES:-1,8,32}; STREAMS=${STREAMS:-1,auto}
: "${MODEL:?set MODEL to an exported model.onnx}" "${ISBI:?set ISBI to the ISBI 2012 dataset folder}"
MODEL=$(realpath "$MODEL"); ISBI=$(realpath "$ISBI"); mkdir -p "$OUT_DIR"; OUT_DIR=$(realpath "$OUT_DIR")
seg() { "$PYTHON" -m seg.toolkit "$@"; }
step() { printf '\n== %s ==\n' "$*"; }

if ! "$PYTHON" -c "import seg.runtime" 2>/dev/null; then
  "$PYTHON" -m pip install -q --no-deps --no-build-isolation --target "$OUT_DIR/site" .
  export PYTHONPATH="$OUT_DIR/site${PYTHONPATH:+:$PYTHONPATH}"
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader

step "train ${BUDGET}s on ${PROVIDER} (Keras on JAX), then ${CPU_BUDGET}s on the CPU for the crops/s ratio"
cd "$OUT_DIR"
platform=$([ "$PROVIDER" = cuda ] && echo cuda || echo cpu)
JAX_PLATFORMS=$platform KERAS_BACKEND=jax seg train --data "$ISBI" --time-budget "$BUDGET" --name accel --quiet
JAX_PLATFORMS=cpu KERAS_BACKEND=jax seg train --data "$ISBI" --time-budget "$CPU_BUDGET" --name cpu --quiet

step "benchmark: ${PROVIDER}, fp32 and the fp16 / u8 siblings that exist"
variants=fp32
for v in fp16 u8; do [ -f "${MODEL%.onnx}.$v.onnx" ] && variants="$variants,$v"; done
seg benchmark --model "$MODEL" --data "$ISBI" --providers "$PROVIDER" --variants "$variants" --batch "$BATCHES" \
  --streams "$STREAMS" \
  --images "$IMAGES" --large "$LARGE" --json bench.json

step "seg infer: ${PROVIDER} against cpu masks on the ISBI test slices"
seg infer --input "$ISBI/test/image" --model "$MODEL" --provider "$PROVIDER" --output masks-accel --overwrite
seg infer --input "$ISBI/test/image" --model "$MODEL" --provider cpu --output masks-cpu --overwrite
"$PYTHON" - <<'PY'
from pathlib import Path
import numpy as np
from seg.runtime import read_image
worst = min(float(np.mean(read_image(a) == read_image(Path("masks-cpu") / a.name)))
            for a in sorted(Path("masks-accel").glob("*.png")))
print(f"mask agreement, worst slice: {worst:.6%}")
PY

step "a 8 x 2048 x 2048 Zarr volume through one ${PROVIDER} worker"
"$PYTHON" - "$ISBI" <<'PY'
import sys
from pathlib import Path
import numpy as np
import zarr
from seg.runtime import read_image
slices = [read_image(p) for p in sorted(Path(sys.argv[1], "test", "image").glob("*"))[:8]]
volume = np.stack([np.tile(s, (4, 4))[:2048, :2048] for s in slices]).astype(np.uint8)
zarr.create_array(store="vol.zarr", shape=volume.shape, chunks=(1, 512, 512), dtype=np.uint8,
                  zarr_format=3, overwrite=True)[...] = volume
PY
workers=1; [ "$PROVIDER" = cuda ] || workers=2
seg infer --input vol.zarr --output vol-out.zarr --model "$MODEL" --provider "$PROVIDER" --workers "$workers" \
  --block 2048 --overwrite
echo "figures in $OUT_DIR"
