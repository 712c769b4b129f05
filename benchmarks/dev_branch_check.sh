#!/usr/bin/env bash
# The plugin's tests against nnU-Net's development branch (MIC-DKFZ/nnUNet master), in a fresh virtual environment
# without the system's packages: torch, then the branch's nnunetv2 from a clone, then this repository (editable) with
# its other dependencies and test extras. Prints the branch commit, runs the quick tier, then the end-to-end tests of
# the exports (stock weights and models, the nnssl checkpoint through nnUNetv2_preprocess_like_nnssl and
# nnUNetv2_train_pretrained) and of the trainers (2D pipeline). Serial (-n 0): one heavy process at a time.
#
#   bash benchmarks/dev_branch_check.sh [WORK_DIR]         # WORK_DIR default: /tmp/nnunet_dev_branch_check
#   NNUNET_GIT=/path/to/clone_or_mirror NNUNET_REF=master bash benchmarks/dev_branch_check.sh
#
# Nothing outside WORK_DIR is written (the tests use pytest's temporary folders); CI does not run this script.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="${1:-/tmp/nnunet_dev_branch_check}"
git_source="${NNUNET_GIT:-https://github.com/MIC-DKFZ/nnUNet}"
ref="${NNUNET_REF:-master}"
export OMP_WAIT_POLICY=PASSIVE nnUNet_def_n_proc=1   # the tests set nnUNet_n_proc_DA for their trainings

rm -rf "$work" && mkdir -p "$work"
git clone --quiet --branch "$ref" "$git_source" "$work/nnUNet"
commit=$(git -C "$work/nnUNet" rev-parse HEAD)
echo "nnU-Net development branch: $git_source $ref at $commit ($(git -C "$work/nnUNet" log -1 --format=%cs))"

python3 -m venv "$work/venv"
source "$work/venv/bin/activate"
pip install --quiet "${TORCH_REQUIREMENT:-torch}"   # e.g. TORCH_REQUIREMENT="torch==2.13.0+cpu"
pip install --quiet "$work/nnUNet"
pip install --quiet -e "$repo[test]"   # keeps the branch's nnunetv2: it satisfies setup.py's range
python - <<'EOF'
import nnunetv2, nnunetv2.run.run_training_from_pretrained, torch
from importlib.metadata import version
print(f"nnunetv2 {version('nnunetv2')} from {nnunetv2.__path__[0]} (has nnUNetv2_train_pretrained), torch {torch.__version__}")
EOF

cd "$repo"
status=0
echo "== quick tier"
python -m pytest tests -m "not slow" -q -n 0 -p no:cacheprovider || status=1
echo "== end-to-end: exports and trainers"
python -m pytest tests/export/test_stock_export.py tests/export/test_nnssl_export.py tests/training/test_pipeline_2d.py \
    -q -n 0 -rs -p no:cacheprovider || status=1
echo "nnU-Net $commit: $([ $status = 0 ] && echo all passed || echo FAILURES)"
exit $status
