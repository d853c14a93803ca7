# Sourced by scripts/demo.sh and scripts/test.sh: create or reuse the virtual environment,
# (re)install dreambat into it when its requirements changed, and work offline.
#   DREAMBAT_VENV      where the environment lives (default: <repo>/.venv)
#   DREAMBAT_TORCH     torch/torchvision requirement (default: torch==2.14.1 torchvision==0.29.1)
#   PYTHON             interpreter that creates the environment (default: python3)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${DREAMBAT_VENV:-$ROOT/.venv}"
TORCH_SPEC="${DREAMBAT_TORCH:-torch==2.14.1 torchvision==0.29.1}"

if [ ! -x "$VENV/bin/python" ]; then
  echo "[dreambat] creating virtual environment in $VENV"
  "${PYTHON:-python3}" -m venv "$VENV"
fi
STAMP="$VENV/.dreambat-installed"
WANT="$(cat "$ROOT/pyproject.toml" "$ROOT/requirements/constraints.txt" | sha256sum | cut -c1-16) $TORCH_SPEC"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
  echo "[dreambat] installing dreambat and its dependencies into $VENV (first run: a few minutes)"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  # torch and torchvision on the same command line as everything else: one resolution, one torch.
  # shellcheck disable=SC2086
  "$VENV/bin/python" -m pip install --quiet $TORCH_SPEC -c "$ROOT/requirements/constraints.txt" -e "$ROOT[test]"
  echo "$WANT" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
# dreambat never downloads models; make the libraries agree.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
cd "$ROOT"
