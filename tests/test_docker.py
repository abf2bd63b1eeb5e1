"""The Docker image, checked without a container engine: docker/Dockerfile's COPY lines, applied
to the build context that .dockerignore leaves, must hold a package that installs and imports;
the image's versions must agree with each other, with pyproject.toml and with what cmacc records
(`cmacc --version`, run.json); the Apptainer recipe builds from that image."""
from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet

from cmacc.system import provenance
from cmacc.cli import main

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "docker" / "Dockerfile"
needs_source = pytest.mark.skipif(not (ROOT / "cmacc").is_dir() or not DOCKERFILE.is_file(),
                                  reason="needs the source tree (absent inside the image's test stage)")


# ---- a small reader of Dockerfiles and .dockerignore (the subset docker/Dockerfile uses) ----
def instructions(text: str) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) per instruction: continuation lines joined, comments dropped."""
    out, cur = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # Docker drops comment lines, also inside a continuation
        if line.endswith("\\"):
            cur += line[:-1] + " "
            continue
        cur += line
        word, _, rest = cur.partition(" ")
        out.append((word.upper(), rest.strip()))
        cur = ""
    return out


def _substitute(s: str, env: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: env.get(m.group(1) or m.group(2), ""), s)


def _arg(rest: str) -> tuple[str, str | None]:
    name, eq, default = rest.partition("=")
    return name.strip(), default.strip().strip('"') if eq else None


def stages(text: str) -> list[dict]:
    """Per build stage: name, image, its ARG defaults, workdir, COPY (sources, dest), RUN lines, LABELs."""
    globals_: dict[str, str] = {}
    out: list[dict] = []
    for word, rest in instructions(text):
        if word == "ARG" and not out:
            name, default = _arg(rest)
            globals_[name] = default or ""
        elif word == "FROM":
            parts = rest.split()
            out.append({"image": _substitute(parts[0], globals_), "name": parts[2] if len(parts) > 2 else None,
                        "args": {}, "workdir": "/", "copies": [], "runs": [], "run_dirs": [], "labels": {}, "env": {}})
        elif word == "ARG":
            name, default = _arg(rest)
            out[-1]["args"][name] = default if default is not None else globals_.get(name, "")
        elif word == "WORKDIR":
            out[-1]["workdir"] = os.path.join(out[-1]["workdir"], rest)
        elif word in ("COPY", "ADD"):
            words = json.loads(rest) if rest.startswith("[") else shlex.split(rest)
            flags = [w for w in words if w.startswith("--")]
            paths = [w for w in words if not w.startswith("--")]
            assert not any("$" in p for p in paths), f"{word} {rest}: variables in paths are not read by this test"
            if not any(f.startswith("--from=") for f in flags):  # --from copies from a stage, not the context
                dest = paths[-1] if paths[-1].startswith("/") else os.path.join(out[-1]["workdir"], paths[-1])
                out[-1]["copies"].append((paths[:-1], dest))
        elif word == "RUN":
            out[-1]["runs"].append(rest)
            out[-1]["run_dirs"].append(out[-1]["workdir"])
        elif word in ("LABEL", "ENV"):
            for item in shlex.split(rest):
                key, _, value = item.partition("=")
                out[-1]["labels" if word == "LABEL" else "env"][key] = value
    return out


def _pattern(p: str) -> re.Pattern:
    rx, i = "", 0
    while i < len(p):
        if p.startswith("**/", i):
            rx, i = rx + "(?:.*/)?", i + 3
        elif p.startswith("**", i):
            rx, i = rx + ".*", i + 2
        else:
            rx += {"*": "[^/]*", "?": "[^/]"}.get(p[i], re.escape(p[i]))
            i += 1
    return re.compile(rx)


def ignored(path: str, rules: list[tuple[bool, re.Pattern]]) -> bool:
    """Docker's .dockerignore: the last rule that matches the path or one of its parent folders wins."""
    parts = path.split("/")
    prefixes = ["/".join(parts[:k]) for k in range(1, len(parts) + 1)]
    verdict = False
    for negate, rx in rules:
        if any(rx.fullmatch(p) for p in prefixes):
            verdict = not negate
    return verdict


def context_files(root: Path) -> list[str]:
    """The files `docker build ROOT` sends: the checkout's (git's view) minus .dockerignore."""
    listed = subprocess.run(["git", "-C", str(root), "ls-files", "-co", "--exclude-standard"],
                            capture_output=True, text=True, check=True).stdout.split("\n")
    rules = []
    ignore = root / ".dockerignore"
    for line in ignore.read_text().splitlines() if ignore.is_file() else []:
        line = line.strip()
        if line and not line.startswith("#"):
            negate = line.startswith("!")
            rules.append((negate, _pattern(os.path.normpath(line.lstrip("!").lstrip("/")))))
    return [f for f in listed if f and (root / f).is_file() and not ignored(f, rules)]


def assemble(dockerfile: str, root: Path, image: Path) -> dict:
    """Apply the COPY lines of the stage that pip-installs cmacc to ``image`` (a folder standing
    for the image's filesystem). Returns that stage; fails naming a source missing from the context."""
    files = context_files(root)
    stage = next(s for s in stages(dockerfile) if any("pip install" in r for r in s["runs"]))
    for sources, dest in stage["copies"]:
        for src in sources:
            src = os.path.normpath(src)
            if src in files:
                target = Path(dest) / Path(src).name if dest.endswith("/") or len(sources) > 1 else Path(dest)
                members = [(src, target)]
            else:  # a folder: its contents go into dest
                members = [(f, Path(dest) / os.path.relpath(f, src)) for f in files if f.startswith(src + "/")]
            assert members, f"COPY {src}: not in the build context (missing, or excluded by .dockerignore)"
            for f, target in members:
                out = image / str(target).lstrip("/")
                out.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(root / f, out)
    return stage


def install_source(stage: dict, image: Path) -> Path:
    """The folder the stage's `pip install` names (a path that the COPY lines filled)."""
    for run, workdir in zip(stage["runs"], stage["run_dirs"]):
        if "pip install" in run:
            for word in shlex.split(run):
                path = os.path.normpath(os.path.join(workdir, re.sub(r"\[.*\]$", "", word)))
                if not word.startswith("-") and (image / path.lstrip("/")).is_dir():
                    return image / path.lstrip("/")
    raise AssertionError("no `pip install <folder>` of a copied folder in the stage")


def install_and_import(dockerfile: str, tmp: Path) -> subprocess.CompletedProcess:
    """Install what the Dockerfile copies, without dependencies, into a fresh target folder, then
    import every module of the installed cmacc from there (tests/import_all.py: never from this
    checkout, and every module of the source tree must be installed) and run the CLI."""
    image, target = tmp / "image", tmp / "site"
    source = install_source(assemble(dockerfile, ROOT, image), image)
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
                          "--no-build-isolation", "--target", str(target), str(source)],
                         capture_output=True, text=True, timeout=300)
    if pip.returncode != 0:
        return pip
    env = {**os.environ, "PYTHONPATH": str(target)}
    walk = subprocess.run([sys.executable, str(ROOT / "tests" / "import_all.py"), "--source", str(ROOT),
                           "--site", str(target)], capture_output=True, text=True, cwd=tmp, env=env, timeout=300)
    if walk.returncode != 0:
        return walk
    probe = ("import cmacc, cmacc.kernels, cmacc.cli, sys; "
             "print(cmacc.__file__); print(cmacc.kernels.__file__); sys.exit(cmacc.cli.main(['--version']))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp, env=env, timeout=120)
    return subprocess.CompletedProcess(done.args, done.returncode, walk.stdout + done.stdout, done.stderr)


@needs_source
@pytest.mark.slow
def test_dockerfile_context_installs_and_imports(tmp_path):
    done = install_and_import(DOCKERFILE.read_text(), tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    walk, package, kernels, version = done.stdout.split("\n", 3)
    if importlib.util.find_spec("triton") is not None:  # then the kernels must have imported, not been excused
        assert "needs the 'triton' extra" not in walk, walk
    assert package.startswith(str(tmp_path / "site")) and kernels.startswith(str(tmp_path / "site")), done.stdout
    assert version.startswith("cmacc "), version


@needs_source
@pytest.mark.slow
def test_a_dockerfile_that_forgets_a_folder_fails(tmp_path):
    forgetful = "\n".join(ln for ln in DOCKERFILE.read_text().splitlines() if not ln.startswith("COPY kernels"))
    assert forgetful != DOCKERFILE.read_text()
    done = install_and_import(forgetful, tmp_path)
    assert done.returncode != 0 and "kernels" in done.stderr, done.stderr[-2000:]


@needs_source
def test_dockerignore_keeps_runs_caches_and_venvs_out():
    rules = [(line.startswith("!"), _pattern(line.lstrip("!"))) for line in
             (ROOT / ".dockerignore").read_text().splitlines() if line.strip() and not line.startswith("#")]
    for junk in (".venv/bin/python", ".ci-venv/lib/x.py", "runs/r/checkpoints/last.pt", ".git/HEAD",
                 "cmacc/__pycache__/train.cpython-311.pyc", "benchmarks/results/x.json", "tests/.pytest_cache/v"):
        assert ignored(junk, rules), junk
    for needed in ("cmacc/engine/train.py", "kernels/__init__.py", "pyproject.toml", "tests/conftest.py", "docker/Dockerfile"):
        assert not ignored(needed, rules), needed


@needs_source
def test_image_versions_agree_with_each_other_and_with_the_project():
    text = DOCKERFILE.read_text()
    base = next(s for s in stages(text) if any("pip install" in r for r in s["runs"]))
    a = base["args"]
    torch_v, cuda = a["TORCH_VERSION"], a["CUDA_VERSION"]
    assert base["image"] == f"pytorch/pytorch:{torch_v}-cuda{cuda}-cudnn9-runtime"
    assert a["DALI_WHEEL"] == f"nvidia-dali-cuda{cuda.split('.')[0]}0", "DALI's wheel must match the CUDA major"
    assert a["DALI_WHEEL"] in provenance.DALI_WHEELS
    import tomllib
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    torch_range = next(d for d in deps if re.match(r"torch\b", d))[len("torch"):]
    assert torch_v in SpecifierSet(torch_range), f"the image's torch {torch_v} is outside pyproject's {torch_range}"
    # every version label is checked by the build against what cmacc records (cmacc --version --expect)
    install = next(r for r in base["runs"] if "pip install" in r)
    expects = dict(re.findall(r"--expect (\w+)=\$\{(\w+)\}", install))
    labels = {k: v for k, v in base["labels"].items() if k.startswith("cmacc.") or k.endswith(".revision")}
    assert labels, "no version labels"
    for key, value in labels.items():
        name = "revision" if key.endswith(".revision") else key.removeprefix("cmacc.")
        assert expects.get(name) and value == "${" + expects[name] + "}", f"label {key} is not checked by the build"
    assert base["env"].get(provenance.REVISION_ENV) == "${GIT_REVISION}", "the image must pass its revision to cmacc"


@needs_source
def test_apptainer_recipe_builds_from_the_docker_image():
    recipe = (ROOT / "docker" / "cmacc.def").read_text()
    header = dict(re.findall(r"^(Bootstrap|From):\s*(\S+)", recipe, re.M))
    assert header["Bootstrap"] == "docker-daemon" and header["From"] == "cmacc:latest"
    assert "-t cmacc " in DOCKERFILE.read_text(), "the Dockerfile's build command must tag the image the recipe reads"
    assert re.search(r"%runscript\s+exec cmacc \"\$@\"", recipe)
    readme = (ROOT / "README.md").read_text()
    assert "apptainer build cmacc.sif docker/cmacc.def" in readme and "apptainer exec --nv" in readme


def test_version_prints_what_run_json_records(tmp_path, capsys):
    from runs import TINY
    out = tmp_path / "r"
    sets = [*TINY, "steps=2", "probe.enabled=false"]
    assert main(["pretrain", "--out", str(out), *[a for s in sets for a in ("--set", s)]]) == 0
    run = json.loads((out / "run.json").read_text())["provenance"]
    capsys.readouterr()
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == provenance.report(run["git"], run["versions"])


def test_expect_names_each_mismatch(capsys):
    v = provenance.versions()
    assert main(["--version", "--expect", f"torch={v['torch'].split('+')[0]}"]) == 0
    assert main(["--version", "--expect", "torch=0.0.1", "--expect", "nonsense=1"]) == 2
    err = capsys.readouterr().err
    assert f"torch: expected 0.0.1, this environment has {v['torch'].split('+')[0]}" in err
    assert "unknown key 'nonsense'" in err


def test_revision_outside_git_comes_from_the_image(tmp_path, monkeypatch):
    monkeypatch.setenv(provenance.REVISION_ENV, "0123abc-dirty")
    assert provenance.git_revision(tmp_path) == {"revision": "0123abc", "dirty": True, "source": "CMACC_GIT_REVISION"}
    monkeypatch.setenv(provenance.REVISION_ENV, "unknown")  # the Dockerfile's default build arg
    assert provenance.git_revision(tmp_path)["revision"] is None
    monkeypatch.setattr(provenance, "git_revision", lambda: {"revision": None, "dirty": None, "source": None})
    assert provenance.expectation_mismatches({"revision": "unknown"}) == []  # a build without --build-arg passes
    assert provenance.expectation_mismatches({"revision": "0123abc"}) == [
        "revision: expected 0123abc, this environment has unknown"]
