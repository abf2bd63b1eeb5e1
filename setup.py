"""Which packages ship. They are found, never listed, so a new subpackage cannot be left out:
every folder under cmacc/ (with or without an __init__.py), and the top-level kernels/ folder
as cmacc.kernels, with any subfolders. Everything else about the project is in pyproject.toml.
tests/test_packaging.py builds a wheel and checks it holds every file of cmacc/ and kernels/."""
from setuptools import find_namespace_packages, setup

SKIP = ["*.__pycache__", "*.__pycache__.*"]
packages = find_namespace_packages(include=["cmacc", "cmacc.*"], exclude=SKIP)
kernels = ["cmacc.kernels"] + [f"cmacc.kernels.{p}" for p in find_namespace_packages("kernels", exclude=SKIP)]

setup(packages=packages + kernels, package_dir={"cmacc.kernels": "kernels"})
