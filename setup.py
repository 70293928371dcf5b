from pathlib import Path

from setuptools import find_packages, setup


def read_version() -> str:
    namespace: dict = {}
    exec((Path(__file__).parent / "pcdet" / "version.py").read_text(), namespace)
    return namespace["__version__"]


setup(
    name="pcdet",
    version=read_version(),
    description="OpenPCDet-compatible 3D LiDAR object detection with knowledge distillation (PointDistiller)",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["pcdet", "pcdet.*"]),
    # torch is deliberately not listed: an unpinned torch requirement pulls a multi-GB CUDA build.
    # requirements.txt pins the CPU wheel; docs/INSTALL.md explains the CUDA path.
    install_requires=["numpy", "numba", "easydict", "pyyaml", "tensorboardX", "tqdm", "pillow", "matplotlib", "scipy"],
    # nuscenes: the devkit's imports; nuscenes-devkit itself must be installed with --no-deps (it pins numpy<2):
    # pip install -e .[nuscenes] && pip install --no-deps -r requirements-nuscenes-devkit.txt (docs/INSTALL.md)
    extras_require={
        "shm": ["SharedArray"],
        "nuscenes": ["pyquaternion", "cachetools", "opencv-python-headless", "scikit-learn"],
    },
)
