"""Builds efcomm's native library with CMake (CMakeLists.txt is the one build description)
and installs the Python package from torch_ext/efcomm.

    pip install --no-build-isolation -e .    # development (torch must be installed first)

Environment:
    EFCOMM_BUILD_DIR     CMake build folder (default: build/cmake in this checkout)
    EFCOMM_WITH_CUDA     AUTO (default), ON or OFF
    EFCOMM_CUDA_ARCHS    e.g. "90" or "80;90"; default: TORCH_CUDA_ARCH_LIST, else 90
    EFCOMM_BUILD_TESTS   AUTO (default: when GoogleTest is found), ON (required) or OFF
    MAX_JOBS             parallel compile jobs
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


class CMakeExtension(Extension):
    def __init__(self, name: str, target: str):
        super().__init__(name, sources=[])
        self.target = target


class CMakeBuild(build_ext):
    def build_extension(self, ext: CMakeExtension) -> None:
        import torch.utils

        build_dir = Path(os.environ.get("EFCOMM_BUILD_DIR", ROOT / "build" / "cmake")).resolve()
        build_dir.mkdir(parents=True, exist_ok=True)
        configure = [
            "cmake",
            "-S",
            str(ROOT),
            "-B",
            str(build_dir),
            "-G",
            "Ninja",
            f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
            f"-DPython3_EXECUTABLE={sys.executable}",
            "-DCMAKE_BUILD_TYPE=Release",
            f"-DEFCOMM_WITH_CUDA={os.environ.get('EFCOMM_WITH_CUDA', 'AUTO')}",
            f"-DEFCOMM_BUILD_TESTS={os.environ.get('EFCOMM_BUILD_TESTS', 'AUTO')}",
        ]
        if os.environ.get("EFCOMM_CUDA_ARCHS"):
            configure.append(f"-DEFCOMM_CUDA_ARCHS={os.environ['EFCOMM_CUDA_ARCHS']}")
        subprocess.run(configure, check=True)
        build = ["cmake", "--build", str(build_dir)]
        if os.environ.get("MAX_JOBS"):
            build += ["--parallel", os.environ["MAX_JOBS"]]
        subprocess.run(build, check=True)

        built = build_dir / f"lib{ext.target}.so"
        destination = Path(self.get_ext_fullpath(ext.name))
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(built, destination)


setup(
    name="efcomm",
    version="0.1.0",
    description="Compressed gradient communication with error feedback (EF21) for PyTorch DDP",
    long_description=(ROOT / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    package_dir={"": "torch_ext"},
    packages=find_packages("torch_ext"),
    ext_modules=[CMakeExtension("efcomm._efcomm_ops", target="efcomm_ops")],
    cmdclass={"build_ext": CMakeBuild},
    install_requires=["torch>=2.11,<2.12", "tqdm>=4.60"],
    extras_require={"test": ["pytest>=8", "pytest-xdist>=3", "numpy", "matplotlib"], "sim": ["matplotlib"]},
    entry_points={"console_scripts": ["efcomm-demo=efcomm.demo:main"]},
)
