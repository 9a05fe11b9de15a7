#!/usr/bin/env bash
# Run on the lent accelerator (device tool), from the repository root, carrying gpu_data and .whl:
#   bash bench/severity_gpu.sh        -> $OUT/runs.tar.gz and the chosen weights in chunks
# The image has torch/timm/opencv; the wheels add what cxrlab needs beyond them (bench/severity_gpu.py).
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch, timm, segmentation_models_pytorch as smp, cv2; print(torch.__version__, timm.__version__, smp.__version__, cv2.__version__, torch.cuda.is_available())" || exit 1
python3 bench/severity_gpu.py run --out "${OUT:-gpu_out}" --budget "${BUDGET:-420}"
