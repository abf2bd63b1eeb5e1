"""An Omniglot-layout zip for tests (the real one lives in ../shared/data/omniglot)."""
import io
import zipfile

import numpy as np
from PIL import Image


def omniglot_zip(path, alphabets=(("Alpha", 40), ("Beta", 30)), drawers=6):
    """An Omniglot-layout zip of random blob characters: 105 x 105 PNGs, black ink on white."""
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(path, "w") as z:
        for a, n in alphabets:
            for c in range(n):
                shape = rng.random((7, 7)) < 0.4
                for d in range(drawers):
                    img = np.kron(shape, np.ones((15, 15))) * (rng.random((105, 105)) < 0.95)
                    buf = io.BytesIO()
                    Image.fromarray(((1 - img) * 255).astype(np.uint8)).save(buf, format="PNG")
                    z.writestr(f"images_background_test/{a}/character{c + 1:02d}/{c:04d}_{d + 1:02d}.png",
                               buf.getvalue())
    return path
