"""Builds the two Rust artifacts this package ships, with cargo, in release mode:

- libringrun (the cdylib of crate ringrun-ffi, ../ffi), installed inside the package as
  ringrun/libringrun.so, where ringrun._lib finds it;
- the `ringrun` command (binary of crate ringrun-launcher, ../launcher), installed in the
  environment's scripts directory (a venv's bin/).

Both build in the workspace's target directory (or $CARGO_TARGET_DIR) with the committed
Cargo.lock (--locked), so a second install reuses the first one's build. The package builds
from a checkout of the repository (`pip install ./python`, `pip wheel ./python`), not from an
sdist: the crates live beside python/, not inside it.
"""

import os
import shutil
import sys

from setuptools import setup
from setuptools.command.build import build
from setuptools.command.bdist_wheel import bdist_wheel
from setuptools_rust import Binding, RustBin, RustExtension, Strip, build_rust

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
LIB_NAME = "libringrun.dylib" if sys.platform == "darwin" else "libringrun.so"


def manifest(crate_dir):
    path = os.path.join(ROOT, crate_dir, "Cargo.toml")
    if not os.path.exists(path):
        raise SystemExit(
            f"{path} not found: the ringrun package builds from a checkout of the ringrun "
            "repository (pip install ./python), not from an sdist"
        )
    return path


class build_rust_c_library(build_rust):
    """Installs the C library as ringrun/libringrun.so: it is loaded with ctypes, not imported,
    so it carries no Python version tag in its name (a stale build/ from another Python would
    otherwise leave two copies in the wheel)."""

    def get_dylib_ext_path(self, ext, target_fname):
        path = super().get_dylib_ext_path(ext, target_fname)
        if ext.binding == Binding.NoBinding:
            return os.path.join(os.path.dirname(path), LIB_NAME)
        return path


class build_afresh(build):
    """pip builds in-tree, in python/build/; setuptools would ship whatever an earlier build left
    there (a module since deleted, a library under another name), so each build starts empty.
    Cargo's own build stays warm in the target directory."""

    def run(self):
        for stale in (self.build_lib, self.build_scripts):
            shutil.rmtree(stale, ignore_errors=True)
        super().run()


class bdist_wheel_platform(bdist_wheel):
    """Neither artifact links against Python: the wheel is tagged for the platform only
    (py3-none-linux_x86_64), so one wheel serves every Python 3 on that platform."""

    def get_tag(self):
        _, _, plat = super().get_tag()
        return "py3", "none", plat


locked = ["--locked"]
setup(
    rust_extensions=[
        RustExtension(
            "ringrun.libringrun",
            path=manifest("ffi"),
            binding=Binding.NoBinding,
            cargo_manifest_args=locked,
            strip=Strip.Debug,
        ),
        RustBin(
            "ringrun",
            path=manifest("launcher"),
            cargo_manifest_args=locked,
            strip=Strip.Debug,
        ),
    ],
    cmdclass={
        "build": build_afresh,
        "build_rust": build_rust_c_library,
        "bdist_wheel": bdist_wheel_platform,
    },
    zip_safe=False,
)
