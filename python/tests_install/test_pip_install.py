"""`pip install ./python` and `pip wheel ./python`, as a new user runs them, in fresh venvs.

The install builds libringrun and the `ringrun` command with cargo (release, in the workspace's
target dir, so a warm target makes it quick); `import ringrun` must then load the library from
any directory with no RINGRUN_LIB, and the command must be on the venv's bin/. The wheel must
install and work where no Rust toolchain is on PATH.

These are slow (a cold release build of two crates), so they live outside python/tests and CI
runs them as their own step.
"""

import json
import os
import shutil
import subprocess
import sys
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
PACKAGE = os.path.join(ROOT, "python")
# A cold release build of ringrun-ffi and ringrun-launcher on 2 cores takes minutes; a warm one
# (target/release already built) seconds. Generous, but a stuck build still ends.
BUILD_TIMEOUT_S = 1800
SHORT_TIMEOUT_S = 120

PROBE = """
import json, ringrun, ringrun._lib as l
l.lib()
print(json.dumps({"package": ringrun.__file__, "lib": l._find(), "bin": l.binary()}))
"""


def clean_env(**extra):
    """The environment a new user's shell would have: nothing pointing at this checkout."""
    env = {k: v for k, v in os.environ.items() if k not in ("RINGRUN_LIB", "PYTHONPATH")}
    env.setdefault("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    env.update(extra)
    return env


def run(argv, timeout=SHORT_TIMEOUT_S, **kw):
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)
    assert done.returncode == 0, f"{argv} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def venv(path):
    run([sys.executable, "-m", "venv", str(path)])
    return path / "bin"


def probe(bin_dir, cwd, **extra):
    out = run([str(bin_dir / "python"), "-c", PROBE], cwd=cwd, env=clean_env(**extra))
    return json.loads(out.strip().splitlines()[-1])


def check_installed(bin_dir, elsewhere):
    """The package, the library and the command all come from the venv, not the checkout."""
    prefix = str(bin_dir.parent)
    got = probe(bin_dir, elsewhere)
    assert got["package"].startswith(prefix), got
    assert got["lib"] == os.path.join(os.path.dirname(got["package"]), "libringrun.so"), got
    assert got["bin"] == str(bin_dir / "ringrun"), got
    help_text = run([got["bin"], "--help"], cwd=elsewhere, env=clean_env())
    assert "launch" in help_text, help_text
    return got


def test_pip_install_builds_and_installs_library_and_command(tmp_path):
    bin_dir = venv(tmp_path / "venv")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run(
        [str(bin_dir / "pip"), "install", "--disable-pip-version-check", "-q", PACKAGE],
        timeout=BUILD_TIMEOUT_S,
        cwd=elsewhere,
        env=clean_env(),
    )
    got = check_installed(bin_dir, elsewhere)

    # RINGRUN_LIB still wins over the installed copy.
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(got["lib"], other / "libringrun.so")
    assert probe(bin_dir, elsewhere, RINGRUN_LIB=str(other / "libringrun.so"))["lib"] == str(
        other / "libringrun.so"
    )
    load = "import ringrun._lib as l\ntry: l.lib()\nexcept OSError as e: print(e)"
    missing = run(
        [str(bin_dir / "python"), "-c", load],
        cwd=elsewhere,
        env=clean_env(RINGRUN_LIB=str(other / "nothing.so")),
    )
    assert "nothing.so" in missing, missing


def test_the_wheel_installs_without_a_toolchain(tmp_path):
    build_bin = venv(tmp_path / "build")
    dist = tmp_path / "dist"
    run(
        [str(build_bin / "pip"), "wheel", "--disable-pip-version-check", "-q", "--no-deps",
         PACKAGE, "-w", str(dist)],
        timeout=BUILD_TIMEOUT_S,
        cwd=tmp_path,
        env=clean_env(),
    )
    (wheel,) = dist.glob("ringrun-*.whl")
    name_tags = wheel.name[: -len(".whl")].split("-")[-3:]
    assert name_tags[:2] == ["py3", "none"] and name_tags[2] != "any", wheel.name
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
    libraries = [n for n in names if n.startswith("ringrun/") and ".so" in n]
    assert libraries == ["ringrun/libringrun.so"], names
    assert any(n.endswith(".data/scripts/ringrun") for n in names), names

    # Another machine of the same platform: a fresh venv and a PATH with no cargo or rustc.
    bare_path = "/usr/bin:/bin"
    assert shutil.which("cargo", path=bare_path) is None, "cargo in /usr/bin: not a bare PATH"
    bin_dir = venv(tmp_path / "venv")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run(
        [str(bin_dir / "pip"), "install", "--disable-pip-version-check", "-q", "--no-index",
         str(wheel)],
        cwd=elsewhere,
        env=clean_env(PATH=bare_path),
    )
    check_installed(bin_dir, elsewhere)
