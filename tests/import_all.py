"""Import every module of the *installed* cmacc, and compare the list with a source tree's.

Run it from outside the checkout, with the interpreter of the environment to check:

    python /path/to/checkout/tests/import_all.py --source /path/to/checkout [--site DIR]

It walks the package that ``import cmacc`` finds (pkgutil), imports each module, and, with
``--source``, fails when a module of the tree (``cmacc/**.py``, ``kernels/**.py`` as
``cmacc.kernels.*``) is not installed, or the installed package is the checkout itself.
A module whose import needs an optional extra that this environment lacks (``triton`` for the
kernels, ``nvidia.dali``) is reported as such and is not a failure; any other ImportError is.
``--site`` asserts that cmacc was imported from under that folder.
Exit 0 when everything imported, 1 otherwise; one line per problem on stderr.
.ci/run runs it in a fresh virtualenv with the built wheel installed, and
tests/test_docker.py runs it on what the Docker image installs.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import pkgutil
import sys
import traceback
from pathlib import Path

# optional dependency (top-level import name) -> the extra that brings it
OPTIONAL = {"triton": "triton", "nvidia": "dali"}


def source_modules(root: Path) -> set[str]:
    """Module names the source tree at ``root`` should install."""
    names = set()
    for folder, prefix in ((root / "cmacc", "cmacc"), (root / "kernels", "cmacc.kernels")):
        for f in folder.rglob("*.py"):
            if "__pycache__" in f.parts:
                continue
            parts = list(f.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            names.add(".".join([prefix, *parts]))
    return names


def installed_modules() -> list[str]:
    import cmacc
    names = ["cmacc"]
    for info in pkgutil.walk_packages(cmacc.__path__, "cmacc.", onerror=lambda name: names.append(name)):
        names.append(info.name)
    return sorted(set(names))


def _missing_optional(err: ImportError) -> str | None:
    """The extra whose absence caused ``err``, when it is one of OPTIONAL and truly absent."""
    root = (getattr(err, "name", None) or "").split(".")[0]
    if root in OPTIONAL and importlib.util.find_spec(root) is None:
        return OPTIONAL[root]
    return None


def check(source: Path | None, site: Path | None) -> tuple[list[str], list[str], list[str]]:
    """(modules imported, modules that need an absent extra, problems)."""
    import cmacc
    problems, imported, optional = [], [], []
    where = Path(cmacc.__file__).resolve().parent
    if site is not None and not where.is_relative_to(site.resolve()):
        problems.append(f"cmacc was imported from {where}, not from under {site}")
    if source is not None and where == (source / "cmacc").resolve():
        problems.append(f"cmacc was imported from the checkout itself ({where}), not from an installed copy")
    names = installed_modules()
    for name in names:
        try:
            importlib.import_module(name)
            imported.append(name)
        except ImportError as e:
            extra = _missing_optional(e)
            if extra is None:
                problems.append(f"{name}: {type(e).__name__}: {e}")
            else:
                optional.append(f"{name} (needs the '{extra}' extra: {e})")
        except Exception as e:  # noqa: BLE001 - any failure to import is a finding
            problems.append(f"{name}: {type(e).__name__}: {e}\n{traceback.format_exc(limit=3)}")
    if source is not None:
        for name in sorted(source_modules(source) - set(names)):
            problems.append(f"{name}: in the source tree but not installed")
    return imported, optional, problems


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--source", type=Path, help="the checkout whose modules must all be installed")
    p.add_argument("--site", type=Path, help="cmacc must be imported from under this folder")
    a = p.parse_args(argv)
    imported, optional, problems = check(a.source, a.site)
    import cmacc
    print(f"cmacc from {Path(cmacc.__file__).parent}: {len(imported)} modules imported, "
          f"{len(optional)} need an absent extra, {len(problems)} problems")
    for line in optional:
        print(f"  optional: {line}")
    for line in problems:
        print(f"import_all: {line}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
