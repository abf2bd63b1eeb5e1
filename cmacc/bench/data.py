"""``cmacc bench data``: decoding throughput per backend on the same files, and a training step's
data time against its compute time.

Files: a folder or manifest of videos, or (default) a generated set of VP9 and H.264 clips with
audio. Each backend decodes the clips it can (PyAV: all; DALI CPU: VP8/VP9/MJPEG; DALI GPU:
also H.264/HEVC when CUDA is present) -- the same clip plans (16 frames at 10 fps, random
start) for every backend -- reporting clips/s and frames/s of decoding alone and with the
augmentation to a training crop.
"""
from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ..data.media import write_video
from ..data.scan import scan_paths
from ..data.video import DaliDecoder, augment, decode_pyav, frame_indices, plan_clip


def generated_files(folder: Path, n: int = 8, seconds: float = 6.0, size=(320, 240)) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for codec in ("vp9", "h264"):
        for i in range(n):
            files.append(write_video(folder / f"{codec}_{i}", codec, seconds=seconds, fps=25, size=size))
    return files


def bench_decode(records, clips_per_file: int, frames: int, fps: float, crop: int, device: str, batch: int = 8):
    rng = np.random.default_rng(0)
    plans = []
    for r in records:
        for _ in range(clips_per_file):
            plans.append((r, plan_clip(begin=r.start_time or 0.0, end=(r.start_time or 0.0) + r.duration, frames=frames,
                                       fps=fps, aspect=r.width / r.height, rng=rng)))
    decodes = {"pyav": lambda r: True, "dali_cpu": lambda r: r.backend_cpu == "dali_cpu",
               "dali_gpu": lambda r: r.backend_gpu == "dali_gpu"}
    backends = ["pyav", "dali_cpu"] + (["dali_gpu"] if device.startswith("cuda") else [])
    rows = []
    for backend in backends:
        every = [(r, p) for r, p in plans if decodes[backend](r)]
        common = [(r, p) for r, p in every if r.backend_cpu == "dali_cpu"]  # what every backend decodes
        subsets = [("dali_cpu-decodable", common)]
        if backend == "pyav" or len(every) != len(common):
            subsets.append(("all", every))
        for subset, todo in subsets:
            if not todo:
                continue
            try:
                t_dec, t_all = _time_backend(backend, todo, crop, device, batch)
            except ImportError as e:
                rows.append({"backend": backend, "files": subset, "skipped": f"{e}"})
                continue
            n = len(todo)
            rows.append({"backend": backend, "files": subset, "clips": n, "frames_per_clip": frames,
                         "codecs": sorted({r.video_codec for r, _ in todo}),
                         "decode_clips_per_s": n / t_dec, "decode_frames_per_s": n * frames / t_dec,
                         "with_augment_clips_per_s": n / t_all})
    return rows


def _time_backend(backend, todo, crop, device, batch):
    if backend == "pyav":
        t0 = time.perf_counter()
        decoded = [decode_pyav(r.path, p.times, v0=r.start_time or 0.0, fps_src=r.fps, n_frames=r.frames,
                               vfr=r.vfr, by_count=r.container == "avi") for r, p in todo]
        t1 = time.perf_counter()
        for (r, p), f in zip(todo, decoded):
            augment(torch.from_numpy(f), p, crop)
        return t1 - t0, time.perf_counter() - t0
    dec = DaliDecoder("mixed" if backend == "dali_gpu" else "cpu", max_batch=batch)
    enc = {r.path: np.fromfile(r.path, np.uint8) for r, _ in todo}
    idx = [frame_indices(p.times, r.start_time or 0.0, r.fps, r.frames) for r, p in todo]
    dec.decode([enc[todo[0][0].path]], [idx[0]], [todo[0][0].path])  # build the pipeline
    if backend == "dali_gpu":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    outs = dec.decode([enc[r.path] for r, _ in todo], idx, [r.path for r, _ in todo])
    if backend == "dali_gpu":
        torch.cuda.synchronize()
    t1 = time.perf_counter()
    for (r, p), o in zip(todo, outs):
        if isinstance(o, Exception):
            raise o
        augment(o, p, crop)
    if backend == "dali_gpu":
        torch.cuda.synchronize()
    return t1 - t0, time.perf_counter() - t0


def bench_step(files_manifest: Path, out: Path, backend: str, steps: int, device: str) -> dict:
    """A few pretraining steps on the files: mean data vs compute seconds per step."""
    from ..config import load_config
    from ..engine.train import pretrain
    cfg = load_config(overrides=[
        "data.name=manifest", f"data.manifest={files_manifest}", f"data.backend={backend}", "method=xmoco",
        "M=8", "K=16", f"steps={steps}", "warmup_steps=1", "data.frames=16", "data.size=112", "probe.enabled=false",
        "run.progress=false", f"run.device={device}", "run.checkpoint_every=1000", f"data.cache_dir={out / 'mel'}"])
    pretrain(cfg, out / f"run_{backend}")
    recs = [json.loads(ln) for ln in (out / f"run_{backend}" / "metrics.jsonl").read_text().splitlines()][1:]
    return {"backend": backend, "steps": len(recs), "M": cfg.M, "clip": "16 frames @ 10 fps, 112 px",
            "data_s_per_step": statistics.mean(r["time_data"] for r in recs),
            "compute_s_per_step": statistics.mean(r["time_compute"] for r in recs)}


def main(args) -> int:
    from ..system import provenance
    from ..data.manifest import Manifest, Row, from_folder, read_manifest
    device = args.device
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.files:
            src = Path(args.files)
            paths = [r.path for r in (read_manifest(src).rows if src.is_file() else from_folder(src).rows)]
        else:
            paths = generated_files(tmp / "media", n=args.generate)
        records = [r for r in scan_paths(paths) if r.usable]
        if not records:
            print("error: no usable files to benchmark")
            return 2
        rows = bench_decode(records, args.clips, 16, 10.0, args.crop, device)
        prov = provenance.collect(torch.device(device))
        print(f"decoding: {len(records)} files, {args.clips} clips each (16 frames @ 10 fps), augment to {args.crop} px, "
              f"on {prov['device_name']}")
        print(f"{'backend':<10}{'files':<20}{'clips':>6}{'clips/s':>10}{'frames/s':>10}{'+augment clips/s':>18}  codecs")
        for r in rows:
            if "skipped" in r:
                print(f"{r['backend']:<10}{r['files']:<20}  skipped: {r['skipped']}")
                continue
            print(f"{r['backend']:<10}{r['files']:<20}{r['clips']:>6}{r['decode_clips_per_s']:>10.1f}"
                  f"{r['decode_frames_per_s']:>10.0f}{r['with_augment_clips_per_s']:>18.1f}  {','.join(r['codecs'])}")
        man = Manifest([Row(Path(r.path)) for r in records])
        man.write(tmp / "files.csv")
        steps = []
        for backend in ("pyav", "auto"):
            steps.append(bench_step(tmp / "files.csv", tmp, backend, args.steps, device))
        print("training step (xmoco, tiny encoders, M=8): data vs compute seconds per step")
        for s in steps:
            print(f"  data.backend={s['backend']:<5} data {s['data_s_per_step']:.3f}s  compute {s['compute_s_per_step']:.3f}s")
        if args.json:
            with open(args.json, "a") as f:
                for r in rows + steps:
                    f.write(json.dumps({"bench": "data", **r, "device_name": prov["device_name"],
                                        "versions": prov["versions"], "git": prov["git"]}) + "\n")
            print(f"appended {len(rows) + len(steps)} rows to {args.json}")
    return 0
