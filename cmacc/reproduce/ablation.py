"""``cmacc reproduce ablation`` -- cmacc's own deviations from Algorithm 1, each switched off or
varied alone, against XMoCo, on the built-in data (``--on builtin``: video and audio linear probes)
or on Spatial-MultiOmniglot at one k (``--on mi``: the mean per-cell probe of the x-encoder).

An arm is a method with a few config keys. Arms that change only the sampler or the pool are
compared with plain xmoco; arms that change what both methods see (split-BN groups, the number of
latent classes) have an xmoco twin with the same keys, and each arm is scored against its own twin:
the per-seed difference cmacc - xmoco (the same seed: the same data, initialisation and clips),
mean and std over seeds.

The deviations (README, "Why the paper's claims fail here"):

  fresh_keys_off  picks enqueued with the pool's keys from its last refresh (Alg. 1 l.9 as printed),
                  not re-encoded by the current key encoders (``sampler.fresh_keys=true``)
  refresh_4x      the pool redrawn four times per epoch instead of once (Alg. 1 l.7-9)
  first_norm      the first k-means++ centroid: the largest gradient embedding (BADGE's choice), not
                  a random one (Alg. 3 l.2)
  posterior_tau   the pseudo-posterior (Eq. 5) at the loss's temperature tau instead of 1
  pool_paper      N / dataset size as the paper's (38,400 / 240K = 0.16) instead of half the data
  bn4             four split-BN groups (the paper preset's) instead of one (with its xmoco twin)
  classes_x4      4x the latent classes of the built-in data (128 for M = 32; --on builtin only;
                  with its xmoco twin): more classes than a batch, as Kinetics-Sound's 34 vs M = 128
                  is not
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from ..config import ConfigError, load_config
from . import ABLATION_ARMS, common, mi, table1
from .omniglot import PAPER_SIZES

PAPER_POOL_RATIO = 38400 / 240000
# name -> (method, config keys with {placeholders} resolved per setting, the xmoco twin's keys or None)
ARMS: dict[str, tuple[str, tuple[str, ...], tuple[str, ...] | None]] = {
    "xmoco": ("xmoco", (), None),
    "cmacc": ("cmacc", (), None),
    "fresh_keys_off": ("cmacc", ("sampler.fresh_keys=false",), None),
    "refresh_4x": ("cmacc", ("pool_refresh={quarter_epoch}",), None),
    "first_norm": ("cmacc", ("sampler.first=norm",), None),
    "posterior_tau": ("cmacc", ("sampler.temperature={tau}",), None),
    "pool_paper": ("cmacc", ("N={pool_paper}",), None),
    "bn4": ("cmacc", ("model.bn_splits=4",), ("model.bn_splits=4",)),
    "classes_x4": ("cmacc", ("data.num_classes={classes_x4}",), ("data.num_classes={classes_x4}",)),
}
MI_ONLY_NOT = ("classes_x4",)  # arms that need the built-in data
assert tuple(ARMS) == ABLATION_ARMS, "cmacc.reproduce.ABLATION_ARMS (the CLI's list) must name ARMS"


@dataclass
class Settings:
    on: str = "builtin"  # builtin | mi
    arms: tuple[str, ...] = tuple(ARMS)
    seeds: tuple[int, ...] = (0, 1, 2)
    steps: int = 0  # 0: the setting's default (built-in: 360, mi: 300)
    chars: int = 3  # --on mi: the k where the methods were compared
    train_size: int = 0  # 0: the setting's default (built-in: 3072, mi: 10000)
    overrides: list[str] = field(default_factory=list)


QUICK = dict(arms=("xmoco", "cmacc", "fresh_keys_off", "refresh_4x", "bn4"), seeds=(0, 1), steps=6,
             overrides=list(table1.QUICK["overrides"]))


def _base(s: Settings) -> tuple[dict, list[str]]:
    """The setting's sizes (for the placeholders) and the keys every run of it gets."""
    if s.on == "builtin":
        cfg = load_config(overrides=list(s.overrides) + ([f"data.train_size={s.train_size}"] if s.train_size else []))
        M, K, n, tau, classes = cfg.M, cfg.K, cfg.data.train_size, cfg.tau, cfg.data.num_classes
    else:
        ms = _mi_settings(s, ())
        M, K, n, tau, classes = ms.M, ms.K, ms.train_size, load_config(overrides=list(s.overrides)).tau, 0
    pool = max(M, K, round(PAPER_POOL_RATIO * n / M) * M)
    sizes = {"quarter_epoch": max(1, n // M // 4), "tau": tau, "pool_paper": pool, "classes_x4": 4 * classes}
    return sizes, list(s.overrides)


def arm_keys(s: Settings, arm: str, twin: bool = False) -> tuple[str, list[str]]:
    """(method, config keys) of an arm, or of its xmoco twin."""
    if arm not in ARMS:
        raise ConfigError(f"--arms: unknown arm {arm!r}; choose from {', '.join(ARMS)}")
    if s.on == "mi" and arm in MI_ONLY_NOT:
        raise ConfigError(f"--arms: {arm} needs the built-in data (--on builtin)")
    method, keys, twin_keys = ARMS[arm]
    sizes, _ = _base(s)
    chosen = (twin_keys or ()) if twin else keys
    return ("xmoco" if twin else method), [k.format(**sizes) for k in chosen]


def twin_of(arm: str) -> str:
    """The xmoco run an arm is scored against: its own twin, or plain xmoco."""
    return f"xmoco+{arm}" if ARMS[arm][2] is not None else "xmoco"


def _mi_settings(s: Settings, keys) -> mi.Settings:
    base = mi.Settings(chars=(s.chars,), seeds=s.seeds, overrides=list(s.overrides) + list(keys))
    return replace(base, **{k: v for k, v in (("steps", s.steps), ("train_size", s.train_size)) if v})


def _one(s: Settings, run: str, seed: int, out: Path, zip_path: str) -> dict:
    """One run: an arm (``run`` = its name) or a twin ("xmoco+ARM")."""
    arm, twin = (run.split("+", 1)[1], True) if run.startswith("xmoco+") else (run, False)
    method, keys = arm_keys(s, arm, twin)
    if s.on == "builtin":
        ts = table1.Settings(methods=(method,), seeds=s.seeds, steps=s.steps or 360, overrides=list(s.overrides) + keys
                             + ([f"data.train_size={s.train_size}"] if s.train_size else []))
        return table1.run_one(ts, method, seed, out, name=run)
    return mi.run_one(_mi_settings(s, keys), zip_path, method, s.chars, seed, out, name=f"{run}-seed{seed}")


def runs_of(s: Settings) -> list[str]:
    """Every run the arms need: the arms, plain xmoco, and the twins."""
    return list(dict.fromkeys([*s.arms, *(twin_of(a) for a in s.arms if a != "xmoco")]))


def check(s: Settings, zip_path: str = "") -> None:
    if s.on not in ("builtin", "mi"):
        raise ConfigError(f"--on: builtin or mi, got {s.on!r}")
    if s.on == "mi" and not zip_path:
        raise ConfigError("--on mi needs --omniglot ZIP")
    for arm in s.arms:
        method, keys = arm_keys(s, arm)
        if s.on == "builtin":
            table1.run_config(table1.Settings(overrides=list(s.overrides) + keys), method, s.seeds[0])
        else:
            mi.run_config(_mi_settings(s, keys), zip_path, method, s.chars, s.seeds[0])


def paired(a: list[float], b: list[float]) -> tuple[float, float]:
    """Mean and sample std over seeds of a - b (the same seeds, in order)."""
    return common.mean_std([x - y for x, y in zip(a, b)])


def run(zip_path: str, out: Path, s: Settings, quick: bool) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    jobs = [(name, "run", seed) for name in runs_of(s) for seed in s.seeds]
    got = common.run_grid(jobs, lambda name, _, seed: _one(s, name, seed, out, zip_path), "ablation runs")
    scores = ("video", "audio") if s.on == "builtin" else ("accuracy",)
    flat = {key: {m: v["run"] for m, v in by_m.items()} for key, by_m in got.items()}
    done = [n for n in runs_of(s) if n in flat.get(scores[0], {})]
    if not done:
        raise ConfigError(f"no kept runs in {out / 'runs'} (--kept-only)")
    results = {n: {sc: flat[sc][n] for sc in scores} for n in done}
    seeds = {n: flat["seed"][n] for n in done}
    deltas = {}
    for arm in s.arms:
        twin = twin_of(arm)
        if arm == "xmoco" or arm not in results or twin not in results:
            continue
        both = [x for x in seeds[arm] if x in seeds[twin]]  # paired by seed, whatever --kept-only found
        if not both:
            continue
        pick = lambda n, sc: [results[n][sc][seeds[n].index(x)] for x in both]  # noqa: E731
        deltas[arm] = {"vs": twin, "seeds": both,
                       **{sc: list(paired(pick(arm, sc), pick(twin, sc))) for sc in scores}}
    sizes, _ = _base(s)
    res = {"experiment": "ablation", "on": s.on, "quick": quick, "settings": asdict(s), "sizes": sizes,
           "arms": {a: {"method": arm_keys(s, a)[0], "keys": arm_keys(s, a)[1], "vs": twin_of(a)} for a in s.arms},
           "results": results, "seeds_kept": seeds, "delta_vs_xmoco": deltas,
           **{key: flat.get(key, {}) for key in ("false_negatives", "distinct", "final_loss", "minutes")},
           "total_minutes": (time.perf_counter() - t0) / 60}
    res["chance"] = float(np.mean(flat["chance"][done[0]])) if s.on == "builtin" else \
        float(np.mean([1 / n for n in PAPER_SIZES[:s.chars]]))
    common.write(out, res, plot, "ablation.png", table(res))
    return res


def table(res: dict) -> str:
    scores = list(next(iter(res["results"].values())))
    where = "built-in data, linear probes" if res["on"] == "builtin" else \
        f"Spatial-MultiOmniglot k = {res['settings']['chars']}, mean per-cell probe"
    lines = [common.grid_table(f"ablation ({where}), mean ± std over seeds {res['settings']['seeds']}",
                               res["results"], scores, common.pct, width=16),
             f"{'arm':<16}{'vs':>16}" + "".join(f"{'Δ ' + sc:>16}" for sc in scores) + "   (paired over seeds)"]
    for arm, d in res["delta_vs_xmoco"].items():
        lines.append(f"{arm:<16}{d['vs']:>16}" + "".join(f"{100 * d[sc][0]:>+10.1f} ± {100 * d[sc][1]:.1f}"
                                                        for sc in scores))
    return "\n".join(lines)


def plot(res: dict, path: Path) -> None:
    scores = list(next(iter(res["results"].values())))
    rows = res["results"]
    common.bar_chart(path, list(rows), {sc: [rows[n][sc] for n in rows] for sc in scores},
                     res.get("chance", 0.0), "probe accuracy (%)",
                     f"cmacc's deviations ablated ({res['on']}), {len(res['settings']['seeds'])} seeds")
