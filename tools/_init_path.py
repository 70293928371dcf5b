"""Put the repository root first on ``sys.path`` so the tools import this checkout's ``pcdet`` without installing it.

Imported for its side effect by train.py, test.py and demo.py (OpenPCDet's tools do the same).
"""

import sys
from pathlib import Path

_REPO_ROOT = str(Path(__file__).resolve().parent.parent)
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)
