"""Put the repository root first on ``sys.path`` so the tools import this checkout's ``pcdet`` without installing it,
and make idle OpenMP/OpenBLAS threads sleep instead of spinning.

Imported for its side effect, before torch and numpy, by train.py, test.py, demo.py and main_job.py. Spinning
threads (OpenMP's default wait policy, OpenBLAS's own pool) burn the cores that data-loader workers and other jobs
need: on a busy 2-core machine training ran 7x faster with these two settings (docs/PERFORMANCE.md). They are
defaults only; values already in the environment win.
"""

import os
import sys
from pathlib import Path

_REPO_ROOT = str(Path(__file__).resolve().parent.parent)
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
