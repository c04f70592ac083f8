#!/usr/bin/env bash
# kit.sh: the GPU checks (suite gpu and the GPU benchmarks) on a machine that has a GPU,
# its driver and the CUDA libraries but none of the project's other packages and no
# network to install them.
#
#   bash tests/gpu/kit.sh pack [BUILD]   here, after `bash run.sh setup` (BUILD: build):
#       gpu-kit.tar.xz at the repository root (git-ignored; $PCKIT_TAR names another
#       path), holding the programs the GPU checks run (each behind a wrapper that gives
#       it the kit's libraries) and every shared library they load beyond glibc, the C++
#       runtime and CUDA's own (cudart, cuBLAS, NCCL): Open MPI and PMIx with their plugins
#       (relocated through OPAL_PREFIX and PMIX_INSTALL_PREFIX), HDF5, libyaml, OpenBLAS
#       and theirs.
#   bash tests/gpu/kit.sh run [--budget SECONDS] [PART...]   there, from the repository
#       root with gpu-kit.tar.xz beside it: unpacks the kit, finds CUDA's libraries and
#       runs the parts in the order given (default check tests bench compress; each fits
#       one 10-minute call): check (the kit on a 2-rank CPU compress job; needs no GPU),
#       tests (kernels, then daemon), kernels (every op, the Llama forward/backward and the
#       NCCL comm against the CPU backend), daemon (projcompd on the GPU against the CPU
#       backend and transformers), bench (bench-gpu in run.sh gpu's modes), compress
#       (bench_compress_gpu.py). With --budget the parts share SECONDS: each step gets
#       what is left, and what would get under 20 s is not started (marked BUDGET), so a
#       lease's one call ends in time with every result so far, e.g. a first GPU call:
#       bash tests/gpu/kit.sh run --budget 480 kernels bench compress daemon
#       Logs in $OUT (or runs/gpu-check). Python parts use the machine's python3 (numpy,
#       torch, transformers, safetensors, h5py), or $PYTHON.
#   bash tests/gpu/kit.sh build BUILD [--budget SECONDS] [PART...]   the same parts on a build tree, on a
#       machine that has the packages (run.sh gpu).
#   bash tests/gpu/kit.sh exec CMD...   CMD in the kit's environment (its mpirun first on
#       PATH, PC_BUILD its build tree), e.g. another benchmark shape:
#       bash tests/gpu/kit.sh exec sh -c '$PC_BUILD/tests/gpu/bench-gpu -B 8 -T 4096 -bf16 1' 
set -uo pipefail
cd "$(dirname "$0")/../.."
top=$(pwd)
KIT_TAR=${PCKIT_TAR:-$top/gpu-kit.tar.xz}
OMPI_LIBDIR=/usr/lib/x86_64-linux-gnu/openmpi
PMIX_DIR=/usr/lib/x86_64-linux-gnu/pmix2
# the programs of the GPU checks, by their place in the build tree
PROGRAMS="daemon/projcompd daemon/projcomp-data tests/e2e/gpu-smoke tests/gpu/test_cuda_ops
  tests/gpu/test_cuda_llama tests/gpu/test_nccl tests/gpu/bench-gpu"

say() { printf '[kit] %s\n' "$*" >&2; }

# Shared libraries the machine provides, never packed: glibc's, the C++ runtime (the
# machine's is as new or newer), the driver's and CUDA's.
system_lib() {
    case "$1" in
    linux-vdso* | ld-linux* | libc.so* | libm.so* | libmvec.so* | libpthread.so* | libdl.so* | librt.so* | \
        libresolv.so* | libutil.so* | libstdc++.so* | libgcc_s.so* | libcuda.so* | libcudart.so* | \
        libcublas.so* | libcublasLt.so* | libnccl.so*) return 0 ;;
    esac
    return 1
}

# A wrapper at $1 that runs $1.bin with the kit's libraries first (PCKIT_LD, set by run).
wrap() {
    cat >"$1" <<'EOF'
#!/bin/sh
LD_LIBRARY_PATH="$PCKIT_LD${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" exec "$0.bin" "$@"
EOF
    chmod +x "$1"
}

pack() {
    local build=${1:-build} stage
    for p in $PROGRAMS; do
        [ -x "$build/$p" ] || { say "$build/$p is missing: build with CUDA first (bash run.sh setup)"; return 1; }
    done
    stage=$(mktemp -d)/gpu-kit
    mkdir -p "$stage/lib" "$stage/usr/bin"
    local objs=()
    for p in $PROGRAMS; do
        mkdir -p "$stage/build/$(dirname "$p")"
        cp "$build/$p" "$stage/build/$p.bin"
        wrap "$stage/build/$p"
        objs+=("$build/$p")
    done
    # Open MPI (mpirun = orterun, orted), its plugins and help texts, and PMIx's
    for b in orterun orted; do
        cp "/usr/bin/$b" "$stage/usr/bin/$b.bin"
        wrap "$stage/usr/bin/$b"
        objs+=("/usr/bin/$b")
    done
    ln -s orterun "$stage/usr/bin/mpirun"
    ln -s orterun.bin "$stage/usr/bin/mpirun.bin"
    mkdir -p "$stage$OMPI_LIBDIR/lib" "$stage/usr/share"
    cp -a "$OMPI_LIBDIR/lib/openmpi3" "$stage$OMPI_LIBDIR/lib/"
    cp -a /usr/share/openmpi "$stage/usr/share/"
    mkdir -p "$stage$PMIX_DIR/lib"
    cp -a "$PMIX_DIR/lib/pmix" "$stage$PMIX_DIR/lib/"
    [ -d "$PMIX_DIR/share" ] && cp -a "$PMIX_DIR/share" "$stage$PMIX_DIR/"
    # every library those load, transitively (ldd resolves the closure), but the machine's
    # (of the plugins, those a one-node run over shared memory loads: the others, UCX, OFI,
    # InfiniBand, fail to load without their libraries and are skipped)
    local plugins=("$OMPI_LIBDIR"/lib/openmpi3/mca_{btl_self,btl_vader,btl_tcp,pml_ob1,bml_r2,coll_*,ess_*}.so
        "$OMPI_LIBDIR"/lib/openmpi3/mca_{pmix_ext3x,plm_*,odls_*,oob_tcp,rml_*,routed_*,grpcomm_*,errmgr_*}.so
        "$OMPI_LIBDIR"/lib/openmpi3/mca_{iof_*,state_*,schizo_*,rmaps_*,ras_*,filem_*,osc_sm,osc_pt2pt}.so
        "$OMPI_LIBDIR"/lib/openmpi3/mca_{op_avx,patcher_overwrite,pstat_linux,reachable_*,rcache_grdma}.so
        "$OMPI_LIBDIR"/lib/openmpi3/mca_{allocator_*,mpool_hugepage,shmem_*,vprotocol_*}.so
        "$PMIX_DIR"/lib/pmix/*.so)
    local deps missing n=0 # deps: "OBJECT: ldd line" for every object
    deps=$(for o in "${objs[@]}" "${plugins[@]}"; do [ -e "$o" ] && ldd "$o" | sed "s|^|$o: |"; done)
    missing=$(grep 'not found' <<<"$deps")
    [ -z "$missing" ] || { say "libraries not found here, so not packed:"; echo "$missing" >&2; return 1; }
    while read -r name path; do
        system_lib "$name" && continue
        [ -f "$path" ] || { say "cannot find $name (needed by the kit)"; return 1; }
        cp -L "$path" "$stage/lib/$name"
        n=$((n + 1))
    done < <(awk '$3 == "=>" && $4 ~ /^\// {print $2, $4}' <<<"$deps" | sort -u)
    tar -C "$(dirname "$stage")" -cJf "$KIT_TAR" gpu-kit
    rm -rf "$(dirname "$stage")"
    say "$KIT_TAR: ${#objs[@]} programs, $n libraries, $(du -h "$KIT_TAR" | cut -f1)"
}

# $1 in a Python wheel of NVIDIA's (site-packages/nvidia/*/lib) of the machine's python3,
# wherever that lives; nothing where none has it.
wheel_lib() {
    "${PYTHON:-python3}" -c 'import glob, os, site, sys
dirs = site.getsitepackages() + [site.getusersitepackages()]
hits = [f for d in dirs for f in glob.glob(os.path.join(d, "nvidia", "*", "lib", sys.argv[1]))]
print(hits[0] if hits else "")' "$1" 2>/dev/null
}

# The directories holding CUDA's libraries on this machine (toolkit, or Python wheels):
# those the programs link, and cuDNN and NVRTC, which backend.attention cudnn loads at
# run time (cuDNN's engines compile with NVRTC).
cuda_dirs() {
    local d dirs=()
    for lib in libcudart.so.13 libcublas.so.13 libcublasLt.so.13 libnccl.so.2 libcudnn.so.9 libnvrtc.so.13; do
        d=$(ldconfig -p 2>/dev/null | awk -v l="$lib" '$1 == l {print $NF; exit}')
        [ -n "$d" ] || d=$(find /usr/local /opt /usr/lib -name "$lib" 2>/dev/null | head -n 1)
        [ -n "$d" ] || d=$(wheel_lib "$lib")
        [ -n "$d" ] && dirs+=("$(dirname "$d")")
    done
    printf '%s\n' "${dirs[@]}" | awk '!seen[$0]++' | paste -sd: -
}

# step LOG SECONDS CMD...: CMD under a time limit, its output to LOG too; a failure sets
# rc (77 is a skip, as in the test suite).
# With a budget (run's --budget, deadline > 0) a step gets at most the time left before the
# deadline; one that would get less than STEP_MIN seconds ($PCKIT_STEP_MIN, default 20) is
# not started (BUDGET), and one that the deadline cuts short is marked CUT; both leave rc
# non-zero (unchecked is not passed). failed: set by a step that ran and failed.
STEP_MIN=${PCKIT_STEP_MIN:-20}
deadline=0 # milliseconds since the epoch; whole seconds would let a step that the
           # deadline just cut see a second left and start the next one
failed=0
now_ms() { local t=${EPOCHREALTIME:-$(date +%s.%N)} f; t=${t/,/.}; f=${t#*.}000; echo $((${t%.*} * 1000 + 10#${f:0:3})); }
step() {
    local log=$1 limit=$2 cut=0
    shift 2
    if [ "$deadline" -gt 0 ]; then
        local left=$((deadline - $(now_ms)))
        if [ "$left" -lt $((STEP_MIN * 1000)) ]; then
            echo "BUDGET ($((left < 0 ? 0 : left / 1000)) s left, not started): $*" | tee -a "$log"
            rc=1
            return
        fi
        [ "$left" -lt $((limit * 1000)) ] && { limit=$((left / 1000)); cut=1; }
    fi
    timeout "$limit" "$@" 2>&1 | tee -a "$log"
    local s=${PIPESTATUS[0]}
    case $s in
    0) ;;
    77) echo "SKIP: $*" | tee -a "$log" ;;
    124) if [ $cut -eq 1 ]; then echo "CUT (the budget's deadline, after $limit s): $*" | tee -a "$log"
         else echo "FAIL (timed out after $limit s): $*" | tee -a "$log"; failed=1; fi
         rc=1 ;;
    *) echo "FAIL ($s): $*" | tee -a "$log"; rc=1; failed=1 ;;
    esac
}

# Unpack the kit (once: into $PCKIT_DIR, default .gpu-kit/ in the repository, git-ignored,
# where programs may run even when /tmp is mounted noexec) and set up its environment:
# the kit's libraries for its programs, CUDA's found on this machine, Open MPI and PMIx
# relocated into it, PC_BUILD pointing at its build tree.
kit_env() {
    [ -f "$KIT_TAR" ] || { say "$KIT_TAR is missing: bash tests/gpu/kit.sh pack, then carry it"; return 1; }
    local dir=${PCKIT_DIR:-$top/.gpu-kit}
    if [ ! -f "$dir/.unpacked" ] || [ "$KIT_TAR" -nt "$dir/.unpacked" ]; then
        rm -rf "$dir" && mkdir -p "$dir" || return 1
        if command -v xz >/dev/null; then
            tar -C "$dir" -xJf "$KIT_TAR" || return 1
        else # python's tarfile reads xz too
            "${PYTHON:-python3}" -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' \
                "$KIT_TAR" "$dir" || return 1
        fi
        touch "$dir/.unpacked"
    fi
    kit=$dir/gpu-kit
    export PCKIT_LD="$kit/lib:$(cuda_dirs)"
    export OPAL_PREFIX=$kit/usr PMIX_INSTALL_PREFIX=$kit$PMIX_DIR PATH=$kit/usr/bin:$PATH
    export OMPI_MCA_mca_base_component_show_load_errors=0 OMPI_MCA_pml=ob1 OMPI_MCA_btl=self,vader
    export OMPI_MCA_oob_tcp_if_include=lo # one node: mpirun reaches its ranks over loopback, whatever else is up
    export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
    export PC_BUILD=$kit/build PC_SRC=$top PYTHONUNBUFFERED=1 OPENBLAS_NUM_THREADS=1
}

# The parts of `run`, each within one 10-minute call of a lent machine.
part_check() { # the kit itself: MPI, HDF5, YAML and BLAS on a 2-rank CPU compress job
    step "$out/kit-check.txt" 300 "$py" tests/gpu/kit_check.py
}
part_kernels() { # the gpu suite's programs: every op, the Llama fwd/bwd, the NCCL comm
    step "$out/tests.txt" 300 "$PC_BUILD/tests/gpu/test_cuda_ops"
    step "$out/tests.txt" 300 "$PC_BUILD/tests/gpu/test_cuda_llama"
    for np in 1 2; do # 2 ranks skip without two devices
        step "$out/tests.txt" 120 mpirun -np $np "$PC_BUILD/tests/gpu/test_nccl"
    done
}
part_daemon() { # the gpu suite's daemon runs against the CPU backend and transformers
    step "$out/tests.txt" 540 "$py" tests/gpu/test_daemon_cuda.py
}
part_tests() { # the whole gpu suite, as tests/gpu/meson.build runs it
    part_kernels
    part_daemon
}
part_bench() { # run.sh gpu's bench-gpu modes, bf16 first with an op profile of two more steps and
    # the attention's kernel variants tuned, then attention by cuDNN, then the kernels held to
    # their first variants, then attention at head_dim 128 (as Llama-3.1-8B's) and at T 8192,
    # profiled, by the kernels and by cuDNN
    for mode in "-bf16 1 -attn 1 -prof 2" "-bf16 1 -attn 2 -prof 2" "-bf16 1 -attn 1 -groups 1 -dkv 1" \
        "-bf16 1 -attn 1 -hd 128 -heads 16 -kv 4 -prof 2" "-bf16 1 -attn 2 -hd 128 -heads 16 -kv 4 -prof 2" \
        "-bf16 1 -attn 1 -B 1 -T 8192 -prof 2" "-bf16 1 -attn 2 -B 1 -T 8192 -prof 2" "-bf16 1" "-tf32 1" \
        "-bf16 1 -w16 0" "-tf32 0"; do
        # shellcheck disable=SC2086
        step "$out/bench-gpu.txt" 300 "$PC_BUILD/tests/gpu/bench-gpu" -B 4 -T 2048 $mode
    done
}
part_compress() { # compress vs prune vs the bound vs PyTorch eager (docs/benchmarks.md)
    step "$out/bench-compress.txt" 540 "$py" tests/gpu/bench_compress_gpu.py --build "$PC_BUILD" --device cuda
}

# run_parts PART...: the parts on the programs under $PC_BUILD (the kit's or a build's).
run_parts() {
    local out rc=0 parts
    if [ "${1:-}" = --budget ]; then
        [[ "${2:-}" =~ ^[0-9]+$ ]] || { say "--budget takes a number of seconds"; return 2; }
        deadline=$(($(now_ms) + $2 * 1000))
        shift 2
    fi
    parts=("$@")
    [ ${#parts[@]} -gt 0 ] || parts=(check tests bench compress)
    for p in "${parts[@]}"; do
        case "$p" in check | tests | kernels | daemon | bench | compress) ;; *) say "unknown part '$p'"; return 2 ;; esac
    done
    out=${OUT:-$top/runs/gpu-check}
    mkdir -p "$out"
    local py=${PYTHON:-python3}
    say "programs in $PC_BUILD; logs in $out; parts: ${parts[*]}"
    for p in "${parts[@]}"; do
        if [ "$p" != check ] && [ ! -f "$out/.gpu" ]; then
            "$PC_BUILD/tests/e2e/gpu-smoke" 2>&1 | tee "$out/gpu-smoke.txt"
            local s=${PIPESTATUS[0]}
            [ "$s" -eq 77 ] && { say "no CUDA device here"; return 77; }
            [ "$s" -eq 0 ] || return 1
            touch "$out/.gpu"
        fi
        "part_$p"
        [ "$p" = check ] && [ $failed -ne 0 ] && { say "the programs do not run here (see $out/kit-check.txt)"; return 1; }
    done
    grep -hE '^(FAIL|CUT|BUDGET)' "$out"/*.txt
    return $rc
}

case "${1:-}" in
pack) pack "${2:-build}" ;;
run) shift; kit_env && say "kit in $kit; CUDA libraries: ${PCKIT_LD#*:}" && run_parts "$@" ;;
build)
    [ -n "${2:-}" ] && [ -x "$2/daemon/projcompd" ] || { say "usage: kit.sh build BUILD [PART...]"; exit 2; }
    PC_BUILD=$(cd "$2" && pwd) PC_SRC=$top
    export PC_BUILD PC_SRC PYTHONUNBUFFERED=1 OPENBLAS_NUM_THREADS=1
    shift 2
    run_parts "$@"
    ;;
exec) shift; kit_env && exec "$@" ;;
*) sed -n '2,30p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
