# The ringrun image that deploy/k8s/ runs: the `ringrun` command, libringrun and the Python
# package (with numpy) on a slim Python base. Build it from the repository root with
#
#   docker build -t ringrun:0.1.0 .
#
# The manifests run `ringrun launch ... -- python /app/train.py`; /app/train.py here is the
# elastic numpy example (python/examples/numpy_train.py). A real job builds FROM this image and
# copies its own script there. tests/deploy.rs checks that this file, README and the manifests
# agree (image name, stages, the paths copied between them, the install commands).

# Build: the wheel (`pip wheel`, as README gives it) builds target/release/libringrun.so and
# target/release/ringrun with cargo and carries both. The Rust version is rust-toolchain.toml's.
FROM rust:1.95.0-bookworm AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3-venv \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /venv
ENV PATH=/venv/bin:$PATH
WORKDIR /src
COPY . .
# The wheel's copies are stripped of debug info; so is the library the runtime copies for C.
RUN pip wheel ./python -w dist \
    && strip --strip-debug target/release/libringrun.so

# Runtime: the same Debian release as the build stage (the binaries link its glibc).
FROM python:3.12-slim-bookworm
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
# The wheel installs the package, libringrun.so inside it, and `ringrun` in /usr/local/bin.
COPY --from=build /src/dist/ dist/
RUN pip install dist/ringrun-*.whl numpy && rm -rf dist
# For C programs (ffi/examples/train.c): the library and its header at the system paths.
COPY --from=build /src/target/release/libringrun.so /usr/local/lib/libringrun.so
COPY --from=build /src/ffi/include/ringrun.h /usr/local/include/ringrun.h
RUN ldconfig
COPY python/examples/numpy_train.py /app/train.py
# The image checks itself for what the manifests run.
RUN ringrun launch --help > /dev/null \
    && python -c "import ringrun; ringrun._lib.lib()" \
    && test -f /app/train.py
CMD ["ringrun", "--help"]
