"""`python -m cmacc` (what torchrun launches: `torchrun ... -m cmacc pretrain ...`)."""
import sys

from .cli import main

if __name__ == "__main__":  # importing this module (tests/import_all.py walks them all) runs nothing
    sys.exit(main())
