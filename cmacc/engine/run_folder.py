"""The run folder over its life: a start that fails removes what it made, a SIGTERM while starting
counts as a failure, and a resume cuts the logs back to its checkpoint (dropping lines a kill tore)."""
from __future__ import annotations

import contextlib
import json
import logging
import shutil
import signal
import threading
from pathlib import Path

from ..system import checkpoint

log = logging.getLogger("cmacc")


def _step_of(line: str) -> int | None:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):  # a line torn by a kill
        return None


def truncate_logs(paths: list[Path], step: int) -> None:
    """Keep the lines of these JSON-lines logs up to ``step``; torn or later lines go."""
    for path in paths:
        kept = [ln for ln in path.read_text().splitlines()
                if (s := _step_of(ln)) is not None and s <= step] if path.exists() else []
        checkpoint.write_atomic(path, "".join(ln + "\n" for ln in kept))


@contextlib.contextmanager
def terminate_raises():
    """SIGTERM raises SystemExit(143) inside the block (main thread only), so cleanup code runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _exit(signum, frame):
        raise SystemExit(128 + signum)
    old = signal.signal(signal.SIGTERM, _exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def remove_failed_start(out: Path) -> None:
    """Undo a start that failed before its first checkpoint; a scan report is worth keeping."""
    if not out.is_dir():
        return
    scan = out / "scan.json"
    for p in out.iterdir():
        if p != scan:
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    if scan.exists():
        log.info("the start failed; kept the scan report %s", scan)
    else:
        out.rmdir()
