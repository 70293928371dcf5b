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
    extras_require={"shm": ["SharedArray"]},  # nuScenes support (and its devkit extra) does not exist yet
)
