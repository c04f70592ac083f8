#!/usr/bin/env bash
# run_fuzz.sh: build the libFuzzer harnesses with clang (ASan + UBSan + libFuzzer) directly
# against common/ sources, replay the regression inputs, then fuzz for a time budget.
#
#   run_fuzz.sh HARNESS [SECONDS] [extra libFuzzer flags...]   replay + fuzz one harness
#   run_fuzz.sh all [SECONDS]                                   every harness in turn
#   run_fuzz.sh build                                           build only
#   run_fuzz.sh list                                            harness names
#
# SECONDS defaults to 30; 0 only replays the seeds and regressions. Builds and the growing
# working corpus live in $FUZZ_CACHE (default $PC_BUILD/fuzz, else build-fuzz/fuzz-cache);
# crashing inputs are written to $FUZZ_CACHE/artifacts/HARNESS/. Exit status: 0 clean,
# 1 a crash, leak, timeout or property violation, 77 clang or libFuzzer missing.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
src=$(cd "$here/../.." && pwd)
cache=${FUZZ_CACHE:-${PC_BUILD:+$PC_BUILD/fuzz}}
cache=${cache:-$src/build-fuzz/fuzz-cache}
HARNESSES="json safetensors st_index hf_config config data_raw data_gen"
[ -f "$src/common/ckpt.h" ] && [ -f "$here/fuzz_ckpt.c" ] && HARNESSES="$HARNESSES ckpt"

# Sources each harness links (besides util.c).
sources_of() {
    case "$1" in
        json) echo json.c ;;
        safetensors | st_index) echo json.c safetensors.c ;;
        hf_config) echo json.c hf_config.c ;;
        config) echo json.c config.c ;;
        data_raw | data_gen) echo data.c ;;
        ckpt) echo log.c comm.c rollcall.c ckpt.c ;;
    esac
}
max_len_of() {
    case "$1" in
        data_raw) echo 16384 ;;
        data_gen) echo 2048 ;;
        *) echo 8192 ;;
    esac
}

CC=${FUZZ_CC:-}
if [ -z "$CC" ]; then
    for c in clang clang-14 clang-15 clang-16; do command -v "$c" >/dev/null && CC=$c && break; done
fi
[ -n "$CC" ] || { echo "run_fuzz.sh: clang not found; skipping (apt-get install clang libclang-rt-14-dev)"; exit 77; }

pkgflags() { pkg-config --cflags --libs "$@" 2>/dev/null; }
CFLAGS="-std=c11 -D_GNU_SOURCE -g -O1 -fno-omit-frame-pointer -fsanitize=fuzzer-no-link,address,undefined
  -fno-sanitize-recover=undefined -Wall -Wextra -Wno-unused-parameter -I$src/common"
LINK="-fsanitize=fuzzer,address,undefined $(pkgflags yaml-0.1) $(pkgflags hdf5-serial) $(pkgflags ompi-c) -lm -lpthread"

build() {
    mkdir -p "$cache/bin" "$cache/obj"
    exec 9>"$cache/.lock"
    flock 9
    local stamp
    stamp=$( (echo "$CC $CFLAGS $LINK"; cat "$src"/common/*.[ch] "$here"/*.[ch] "$here/run_fuzz.sh") | md5sum | cut -c1-16)
    if [ "$(cat "$cache/.stamp" 2>/dev/null)" != "$stamp" ]; then
        echo "run_fuzz.sh: building harnesses with $CC into $cache"
        rm -f "$cache"/obj/*.o "$cache"/bin/*
        # probe that libFuzzer is there (clang without compiler-rt cannot link it)
        if ! echo 'int LLVMFuzzerTestOneInput(const char*d,long n){return 0;}' |
            "$CC" -x c - -fsanitize=fuzzer -o "$cache/probe" 2>"$cache/probe.log"; then
            echo "run_fuzz.sh: $CC cannot link -fsanitize=fuzzer (install libclang-rt-14-dev); skipping"
            cat "$cache/probe.log"
            exec 9>&-
            exit 77
        fi
        local s
        for s in util.c json.c safetensors.c hf_config.c config.c data.c $( [ -f "$src/common/ckpt.c" ] && echo log.c comm.c rollcall.c ckpt.c); do
            # shellcheck disable=SC2046
            "$CC" $CFLAGS $(pkg-config --cflags yaml-0.1 hdf5-serial ompi-c) -c "$src/common/$s" -o "$cache/obj/${s%.c}.o" &
        done
        wait
        local h objs
        for h in $HARNESSES; do
            objs="$cache/obj/util.o"
            for s in $(sources_of "$h"); do objs="$objs $cache/obj/${s%.c}.o"; done
            # shellcheck disable=SC2046,SC2086
            "$CC" $CFLAGS -Werror $(pkg-config --cflags hdf5-serial ompi-c) "$here/fuzz_$h.c" $objs $LINK -o "$cache/bin/fuzz_$h" &
        done
        wait
        for h in $HARNESSES; do [ -x "$cache/bin/fuzz_$h" ] || { echo "run_fuzz.sh: build of fuzz_$h failed"; exit 1; }; done
        echo "$stamp" >"$cache/.stamp"
    fi
    exec 9>&-
}

export HDF5_USE_FILE_LOCKING=FALSE
export ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=0:detect_leaks=1:allocator_may_return_null=0}
export LSAN_OPTIONS=${LSAN_OPTIONS:-suppressions=$here/lsan.supp:print_suppressions=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

run_one() {
    local h=$1 secs=$2
    shift 2
    local bin="$cache/bin/fuzz_$h" work="$cache/corpus/$h" art="$cache/artifacts/$h/"
    mkdir -p "$work" "$art"
    local dict=()
    [ -f "$here/dict/$h.dict" ] && dict=(-dict="$here/dict/$h.dict")
    local common=(-timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=1024 -max_len="$(max_len_of "$h")"
        -artifact_prefix="$art" -print_final_stats=1 "${dict[@]}")
    # 1. regressions and seeds, one run each
    local files=() replay_failed=0
    for f in "$here/regressions/$h"/* "$here/corpus/$h"/*; do [ -f "$f" ] && files+=("$f"); done
    if [ ${#files[@]} -gt 0 ]; then
        if ! "$bin" "${common[@]}" "${files[@]}" >"$cache/$h.replay.log" 2>&1; then
            grep -E -B2 -A30 'Running: |ERROR: |runtime error|fuzz property violated' "$cache/$h.replay.log" | head -60
            echo "FAIL fuzz_$h: a regression or seed input fails (log: $cache/$h.replay.log)"
            replay_failed=1
        else
            echo "fuzz_$h: replayed ${#files[@]} regression/seed inputs"
        fi
    fi
    [ "$secs" -gt 0 ] || return $replay_failed
    # 2. fuzz: the working corpus grows in the cache; seeds are read, never written
    local log="$cache/$h.fuzz.log"
    local rc=0
    "$bin" "${common[@]}" -max_total_time="$secs" "$@" "$work" "$here/corpus/$h" >"$log" 2>&1 || rc=$?
    local runs
    runs=$(grep -Eo 'Done [0-9]+ runs in [0-9]+ second' "$log" | tail -1 || true)
    local execs cov
    execs=$(grep -E 'stat::number_of_executed_units' "$log" | grep -Eo '[0-9]+$' || echo '?')
    cov=$(grep -Eo 'cov: [0-9]+ ft: [0-9]+ corp: [0-9]+/[0-9a-zA-Z]+' "$log" | tail -1 || true)
    if [ $rc -ne 0 ]; then
        grep -E -A40 'ERROR: |runtime error|fuzz property violated|==[0-9]+==' "$log" | head -80
        echo "FAIL fuzz_$h: libFuzzer exit $rc after $execs executions; crashing input in $art (log: $log)"
        echo "  reproduce: $bin $art<file>; keep it in tests/fuzz/regressions/$h/ once fixed"
        return 1
    fi
    echo "fuzz_$h: $execs executions in ${secs}s ($runs) $cov; no crash"
    return $replay_failed
}

case "${1:-}" in
    "" | -h | --help) sed -n '2,13p' "$0"; exit 0 ;;
    list) echo "$HARNESSES"; exit 0 ;;
    build) build; exit 0 ;;
esac
target=$1
secs=${2:-30}
shift $(( $# >= 2 ? 2 : 1 ))
build
if [ "$target" = all ]; then
    fails=0
    for h in $HARNESSES; do run_one "$h" "$secs" "$@" || fails=$((fails + 1)); done
    exit $(( fails > 0 ))
fi
case " $HARNESSES " in *" $target "*) ;; *) echo "run_fuzz.sh: unknown harness '$target' (have: $HARNESSES)"; exit 2 ;; esac
run_one "$target" "$secs" "$@"
