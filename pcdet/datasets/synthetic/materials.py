"""Surface materials of the scene primitives.

A primitive stores its material as an index (``MATERIAL_IDS``) so that the sensor's numba kernel can look the
material's extra dropout up in a plain array (``MATERIAL_DROPOUT``).
"""

from __future__ import annotations

import numpy as np

# Materials: (reflectivity low, high, extra dropout). Reflectivity is drawn per object within [low, high].
MATERIALS = {
    "paint": (0.0, 0.7, 0.0),
    "glass": (0.0, 0.12, 0.35),
    "tyre": (0.0, 0.08, 0.10),
    "cloth": (0.05, 0.5, 0.0),
    "metal": (0.15, 0.55, 0.02),
    "wall": (0.15, 0.65, 0.0),
    "vegetation": (0.25, 0.55, 0.12),
    "pole": (0.25, 0.70, 0.0),
    "concrete": (0.25, 0.45, 0.0),
    "plastic": (0.08, 0.50, 0.0),
    "retro": (0.85, 0.99, 0.0),
}
MATERIAL_IDS = {name: i for i, name in enumerate(MATERIALS)}
MATERIAL_DROPOUT = np.array([v[2] for v in MATERIALS.values()])
