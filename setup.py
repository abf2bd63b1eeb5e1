"""Which packages ship. They are found, never listed, so a new subpackage cannot be left out:
every folder under cmacc/ (with or without an __init__.py), and the top-level kernels/ folder
as cmacc.kernels, with any subfolders. Everything else about the project is in pyproject.toml.
tests/test_packaging.py builds a wheel and checks it holds every file of cmacc/ and kernels/."""
from pathlib import Path

from setuptools import find_namespace_packages, setup

SKIP = ["*.__pycache__", "*.__pycache__.*"]
packages = find_namespace_packages(include=["cmacc", "cmacc.*"], exclude=SKIP)
kernels = ["cmacc.kernels"] + [f"cmacc.kernels.{p}" for p in find_namespace_packages("kernels", exclude=SKIP)]

# Data files (e.g. cmacc/data/kinetics_sound.txt) ship too, found the same way: every non-.py file.
_DATA = sorted({str(p.parent.relative_to("cmacc")) for p in Path("cmacc").rglob("*")
                if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts})
package_data = {("cmacc" if d == "." else "cmacc." + d.replace("/", ".")): ["*.*"] for d in _DATA}

setup(packages=packages + kernels, package_dir={"cmacc.kernels": "kernels"}, package_data=package_data)
