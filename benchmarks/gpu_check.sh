#!/usr/bin/env bash
# Everything that needs a GPU, in one unattended call (a lent GPU machine has a python3 with
# torch, torchvision, typer, rich, pandas, scikit-learn, matplotlib and pytest, and no
# network): the CUDA-only tests, then benchmarks/gpu_speed.py. Logs and the figures go to
# $OUT (or /tmp/ntlab-gpu). From the repository root:
#
#     bash benchmarks/gpu_check.sh
set -uo pipefail
out="${OUT:-/tmp/ntlab-gpu}"
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi -L 2>&1 | tee "$out/device.txt"
python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'cuda', torch.cuda.is_available())" | tee -a "$out/device.txt"
python3 -m pytest -q -p no:cacheprovider -rs \
  tests/core/test_speed.py tests/data/test_decode.py 2>&1 | tee "$out/tests.log"
tests=$?
python3 benchmarks/gpu_speed.py --json "$out/gpu_speed.json" 2>&1 | tee "$out/gpu_speed.md"
bench=$?
echo "tests exit $tests, benchmark exit $bench"
exit $(( tests || bench ))
