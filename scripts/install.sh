#!/usr/bin/env bash
# Install rtlipsync into ./.venv (or into the virtual environment that is already active).
# Everything comes from PyPI; no model is downloaded: the face models ship inside mediapipe,
# the voice inside espeakng-loader, the default face inside matplotlib.
#
#   bash scripts/install.sh         the server and the offline tools (no torch)
#   bash scripts/install.sh test    also what the whole test suite needs (the MuseTalk and cluster extras)
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${VIRTUAL_ENV:-}" ]; then
  if [ ! -x .venv/bin/python ]; then
    "${PYTHON:-python3}" -m venv .venv
  fi
  # shellcheck disable=SC1091
  . .venv/bin/activate
fi
python - <<'PY'
import sys
if not (3, 10) <= sys.version_info[:2] <= (3, 12):
    sys.exit(f"rtlipsync needs Python 3.10-3.12 (mediapipe's wheels), this is {sys.version.split()[0]}")
PY
python -m pip install -q --upgrade pip
EXTRAS="${EXTRAS:-dev}"
if [ "${1:-}" = "test" ]; then
  EXTRAS="$EXTRAS,musetalk,cluster"
  # One exact torch, installed first so the extra's range is already met: CI machines carry
  # this version's CPU build locally, where an open range would fetch the newest CUDA build
  # (several GB). Any torch >= 2.1 works for the tests.
  python -c "import torch" 2>/dev/null || python -m pip install -q "torch==2.13.0"
fi
python -m pip install -q -e ".[$EXTRAS]"
# mediapipe depends on opencv-contrib-python, the GUI build (it needs libGL); it and
# opencv-python-headless both write the cv2 package. Reinstall the headless build last so it is
# the one that wins, whatever order pip chose.
python -m pip install -q --force-reinstall --no-deps "opencv-python-headless>=4.8,<4.12"
python -c "import cv2, mediapipe, av, espeakng_loader; print('rtlipsync installed; OpenCV', cv2.__version__)"
