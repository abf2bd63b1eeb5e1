"""``cmacc reproduce table1`` -- CM-ACC Table 1 on the built-in data: unimodal vs cross-modal, the
extra FC layer, random vs active negatives; ``cmacc reproduce avid`` -- AVID's Table 1 (Self vs
Cross vs Joint) beside xmoco and cmacc, on the same runner.

Rows: SMoCo (two unimodal MoCo's), XMoCo w/o fcl, XMoCo, CM-ACC, each ``cmacc pretrain --set
method=NAME`` with the CPU defaults otherwise (the built-in synthetic videos, 32 latent classes),
scored by the run's own linear probes (video and audio, held-out clips). The paper fine-tunes on
UCF101 / HMDB51 / ESC50 after Kinetics-Sound pretraining; the claims tested are its orderings:
(4) > (3), (5) > (4), (6) > (5). The random-init probe of every run is the "Scratch" reference.
AVID's claim (Morgado et al. 2020, Table 1, linear probes after AudioSet-100K pretraining): Cross-AVID
beats Self-AVID and Joint-AVID in both modalities.

Runs are kept in RUNS (default OUT/runs) by config, so ``--runs`` pointed at table1's folder lets
``reproduce avid`` reuse its xmoco and cmacc runs.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..config import ConfigError, load_config
from . import METHODS as EXPERIMENT_METHODS
from . import common

METHODS = EXPERIMENT_METHODS["table1"]
PAPER = {  # Table 1, top-1 %: UCF101, HMDB51, ESC50
    "columns": ("ucf101", "hmdb51", "esc50"),
    "smoco": (70.7, 35.2, 69.0), "xmoco_nofcl": (72.9, 37.5, 70.9), "xmoco": (74.1, 38.7, 73.0),
    "cmacc": (77.2, 40.6, 79.2)}
AVID_METHODS = EXPERIMENT_METHODS["avid"]
AVID_PAPER = {  # AVID Table 1, best block, linear probes: Kinetics (video), ESC (audio)
    "columns": ("kinetics", "esc"),
    "avid_cross": (39.95, 75.05), "avid_self": (32.08, 72.64), "avid_joint": (33.04, 71.77)}


@dataclass
class Settings:
    methods: tuple[str, ...] = METHODS
    seeds: tuple[int, ...] = (0, 1, 2)
    steps: int = 360  # the CPU default run
    overrides: list[str] = field(default_factory=list)
    runs: str = ""  # where runs are kept (default OUT/runs)


QUICK = dict(methods=("xmoco", "cmacc"), seeds=(0,), steps=6,
             overrides=["data.num_classes=8", "data.train_size=96", "data.probe_train_size=32",
                        "data.probe_test_size=32", "data.frames=4", "data.size=16", "data.audio_frames=8", "M=8",
                        "K=16", "N=48", "warmup_steps=2", "avid.num_negatives=32"])
AVID_QUICK = {**QUICK, "methods": ("avid_self", "avid_cross")}


def run_config(s: Settings, method: str, seed: int):
    keys = [f"method={method}", f"seed={seed}", f"steps={s.steps}", "run.progress=false",
            "run.checkpoint_every=100000", "run.keep_checkpoints=0"]
    return load_config(overrides=keys + list(s.overrides))


def check(s: Settings) -> None:
    for method in s.methods:
        run_config(s, method, s.seeds[0])


def run_one(s: Settings, method: str, seed: int, out: Path, name: str = "") -> dict:
    cfg = run_config(s, method, seed)
    run_dir = (Path(s.runs) if s.runs else out / "runs") / f"{name or method}-seed{seed}"

    def compute() -> dict:
        summary, why = common.train_summary(cfg, run_dir)
        p = summary["probe"]
        return {"video": p["video"]["pretrained"] / 100, "audio": p["audio"]["pretrained"] / 100,
                "random_init_video": p["video"]["random_init"] / 100,
                "random_init_audio": p["audio"]["random_init"] / 100, "chance": p["chance"] / 100, **why}

    return common.cached(run_dir, cfg, compute)


def run(out: Path, s: Settings, quick: bool, experiment: str = "table1") -> dict:
    """experiment: "table1" (CM-ACC Table 1) or "avid" (AVID's Table 1): the paper numbers and names."""
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    jobs = [(m, "run", seed) for m in s.methods for seed in s.seeds]
    got = common.run_grid(jobs, lambda m, _, seed: run_one(s, m, seed, out), f"{experiment} runs")
    flat = {key: {m: v["run"] for m, v in by_m.items()} for key, by_m in got.items()}
    done = [m for m in s.methods if m in flat.get("video", {})]  # all of them unless --kept-only
    if not done:
        raise ConfigError(f"no kept runs of {list(s.methods)} in {s.runs or out / 'runs'} (--kept-only)")
    results = {m: {mod: flat[mod][m] for mod in ("video", "audio")} for m in done}
    random_init = {mod: [x for m in done for x in flat[f"random_init_{mod}"][m]] for mod in ("video", "audio")}
    res = {"experiment": experiment, "quick": quick, "settings": asdict(s), "results": results,
           "random_init": random_init,
           **{key: flat[key] for key in ("false_negatives", "distinct", "final_loss", "minutes")},
           "chance": float(np.mean(flat["chance"][done[0]])),
           "paper": PAPER if experiment == "table1" else AVID_PAPER,
           "total_minutes": (time.perf_counter() - t0) / 60}
    common.write(out, res, plot, f"{experiment}.png", table(res))
    return res


def table(res: dict) -> str:
    rows = dict(res["results"], random_init=res["random_init"])
    what = {"table1": "CM-ACC Table 1, UCF101 / HMDB51 / ESC50 fine-tuning",
            "avid": "AVID Table 1, best-block linear probes, Kinetics / ESC"}[res["experiment"]]
    paper = [f"paper ({what}):"] + [
        f"{m:<16}" + "".join(f"{v:>10.1f}" for v in res["paper"][m]) for m in res["results"] if m in res["paper"]]
    return "\n".join([
        common.grid_table(f"linear probe accuracy on the built-in data, mean ± std over seeds "
                          f"{res['settings']['seeds']} (chance {100 * res['chance']:.1f}%)", rows,
                          ["video", "audio"], common.pct),
        common.grid_table("false negatives (share of D with the query's class), distinct classes per step",
                          {m: {"false neg": res["false_negatives"][m], "distinct": res["distinct"][m]}
                           for m in res["results"]}, ["false neg", "distinct"], common.mean_fmt("%.3f")),
        *paper])


def plot(res: dict, path: Path) -> None:
    rows = dict(res["results"], random_init=res["random_init"])
    paper = "CM-ACC" if res["experiment"] == "table1" else "AVID"
    common.bar_chart(path, list(rows), {mod: [rows[m][mod] for m in rows] for mod in ("video", "audio")},
                     res["chance"], "linear probe accuracy (%)",
                     f"{paper} Table 1 on the built-in data, {len(res['settings']['seeds'])} seeds, "
                     f"{res['settings']['steps']} steps")
