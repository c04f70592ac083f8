#!/usr/bin/env bash
# projcompd developer entry point: installs what the project needs, builds, and runs
# the demo or the test suite.
#   bash run.sh setup   install packages (apt), the Python venv for reference tests, build
#   bash run.sh demo    setup + the tiny end-to-end example (no GPU needed)
#   bash run.sh test    setup + every test; ends with "N passed, N failed, N skipped"
#   bash run.sh gpu     setup + on a GPU machine: the GPU tests and benchmarks, to runs/gpu-check/
#   bash run.sh gpu-kit setup + gpu-kit.tar.xz: the same for a GPU machine without these
#                       packages or a network (tests/gpu/kit.sh: carry it there, then
#                       `bash tests/gpu/kit.sh run`)
# Re-running is fast: installed packages, the venv and the build are reused.
set -euo pipefail
cd "$(dirname "$0")"
top=$(pwd)

VENV=${PROJCOMP_VENV:-/root/.cache/projcompd/venv}
BUILD=${PROJCOMP_BUILD:-build}
APT_PKGS="build-essential meson ninja-build pkg-config libopenmpi-dev openmpi-bin libyaml-dev
  libhdf5-dev hdf5-tools libopenblas-dev libcmocka-dev python3 python3-venv python3-pip
  python3-numpy python3-torch python3-h5py gnuplot-nox slurm-wlm munge bible-kjv valgrind clang libclang-rt-14-dev"
PIP_PKGS="transformers==4.46.3 safetensors==0.8.0 tokenizers==0.20.3"

export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_btl=self,vader OMPI_MCA_rmaps_base_oversubscribe=1

say() { printf '[run.sh] %s\n' "$*" >&2; }

install_apt() {
    local missing=()
    for p in $APT_PKGS; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        say "installing ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
}

install_venv() {
    local stamp="$VENV/.projcompd-$(echo "$PIP_PKGS" | md5sum | cut -c1-12)"
    [ -f "$stamp" ] && return 0
    say "setting up the Python venv $VENV ($PIP_PKGS)"
    if [ ! -x "$VENV/bin/python" ]; then # a venv in use by others is updated in place, never removed
        mkdir -p "$(dirname "$VENV")"
        /usr/bin/python3 -m venv --system-site-packages "$VENV"
    fi
    "$VENV/bin/pip" install -q --disable-pip-version-check $PIP_PKGS
    "$VENV/bin/python" -c 'import torch, transformers, safetensors, numpy, h5py'
    touch "$stamp"
}

build() {
    if [ ! -f "$BUILD/build.ninja" ]; then
        meson setup "$BUILD" -Dpython="$VENV/bin/python" >/dev/null
    fi
    ninja -C "$BUILD" >/dev/null
}

setup() {
    install_apt
    install_venv
    build
}

case "${1:-}" in
setup)
    setup
    ;;
demo)
    setup
    exec bash "$top/configs/demo.sh" "$BUILD"
    ;;
test)
    setup
    shift
    rc=0
    meson test -C "$BUILD" --print-errorlogs --num-processes 2 "$@" || rc=$?
    extra=()
    if [ $# -eq 0 ]; then # the whole suite: also the sanitizer build and valgrind, once
        for what in asan valgrind; do
            s=0
            ASAN_BUILD=build-asan VALGRIND_BUILD="$BUILD" PYTHON="$VENV/bin/python" \
                bash "$top/tests/sanitize.sh" "$what" || s=$?
            extra+=("sanitize-$what=$s")
            [ $s -eq 0 ] || [ $s -eq 77 ] || rc=1
        done
    fi
    "$VENV/bin/python" "$top/tests/summary.py" "$BUILD/meson-logs/testlog.json" "${extra[@]}"
    exit $rc
    ;;
gpu)
    setup
    PYTHON="$VENV/bin/python" exec bash "$top/tests/gpu/kit.sh" build "$BUILD" tests bench compress
    ;;
gpu-kit)
    setup
    exec bash "$top/tests/gpu/kit.sh" pack "$BUILD"
    ;;
*)
    sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
