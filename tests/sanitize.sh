#!/usr/bin/env bash
# sanitize.sh: the memory-safety run of the project, meant for CI once (not a meson test).
#  1. ASan + UBSan: configures build-asan (-Db_sanitize=address,undefined -Db_lundef=false),
#     builds it and runs every suite but fuzz (own sanitized build), slurm (daemons), docs and
#     gpu: units and the end-to-end runs of the sanitized daemon under mpirun, with leak
#     checking on; third-party leaks (Open MPI, HDF5, OpenBLAS) are suppressed by
#     tests/lsan.supp, and UBSan findings are fatal.
#  2. valgrind memcheck of one end-to-end job: `mpirun -np 1 valgrind projcompd` on a tiny
#     compress job of 2 steps (with a checkpoint per step) built from the plain build;
#     Open MPI noise is suppressed by tests/valgrind.supp; any other error fails.
# Usage: tests/sanitize.sh [asan|valgrind|all]   (default all). Prints a summary with
# timings; exit status 0 when both are clean.
# Environment: ASAN_BUILD (build-asan), VALGRIND_BUILD (build), PYTHON (the test venv).
set -uo pipefail
cd "$(dirname "$0")/.."
src=$(pwd)
what=${1:-all}
ASAN_BUILD=${ASAN_BUILD:-build-asan}
VALGRIND_BUILD=${VALGRIND_BUILD:-build}
PYTHON=${PYTHON:-/root/.cache/projcompd/venv/bin/python}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_btl=self,vader OMPI_MCA_rmaps_base_oversubscribe=1 OPENBLAS_NUM_THREADS=1
summary=()
status=0

run_asan() {
    local t0=$SECONDS
    if [ ! -f "$ASAN_BUILD/build.ninja" ]; then
        meson setup "$ASAN_BUILD" -Db_sanitize=address,undefined -Db_lundef=false -Dpython="$PYTHON" \
            >"$ASAN_BUILD.setup.log" 2>&1 || { cat "$ASAN_BUILD.setup.log"; return 1; }
    fi
    ninja -C "$ASAN_BUILD" >/dev/null || return 1
    local tb=$SECONDS
    # detect_leaks on, with library suppressions; abort on the first UBSan report
    export ASAN_OPTIONS="detect_leaks=1:fast_unwind_on_malloc=0:check_initialization_order=1"
    export PC_SANITIZER=asan # tests that measure memory skip: RSS holds the shadow and quarantine
    # keep Open MPI's plugins loaded at exit so their leaks have a module name to suppress
    export OMPI_MCA_mca_base_component_disable_dlclose=1
    export LSAN_OPTIONS="suppressions=$src/tests/lsan.supp:print_suppressions=0"
    export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
    local log="$ASAN_BUILD/sanitize-test.log"
    meson test -C "$ASAN_BUILD" --suite safetensors --suite config --suite data --suite comm --suite model \
        --suite plan --suite checkpoint --suite e2e --suite compress --suite badinput \
        --print-errorlogs --num-processes "$(nproc)" -t 4 >"$log" 2>&1
    local rc=$?
    grep -E '^(Ok|Expected Fail|Fail|Unexpected Pass|Skipped|Timeout): ' "$log" | tr '\n' ' ' >"$ASAN_BUILD/sanitize-counts.txt"
    grep -E ' (FAIL|TIMEOUT) ' "$log" | sed 's/^/  /'
    grep -hE 'ERROR: (AddressSanitizer|LeakSanitizer)|runtime error:' "$ASAN_BUILD"/meson-logs/testlog.txt 2>/dev/null |
        sort | uniq -c | head -20 | sed 's/^/  /'
    summary+=("asan+ubsan: $( [ $rc -eq 0 ] && echo clean || echo FAILED ) ($(cat "$ASAN_BUILD/sanitize-counts.txt")) build $((tb - t0)) s, tests $((SECONDS - tb)) s; log $log")
    return $rc
}

run_valgrind() {
    local t0=$SECONDS
    command -v valgrind >/dev/null || { summary+=("valgrind: SKIPPED (apt-get install valgrind)"); return 0; }
    if [ ! -f "$VALGRIND_BUILD/build.ninja" ]; then
        meson setup "$VALGRIND_BUILD" -Dpython="$PYTHON" >/dev/null || return 1
    fi
    ninja -C "$VALGRIND_BUILD" >/dev/null || return 1
    local job
    job=$(PC_KEEP_TMP=1 PC_BUILD="$src/$VALGRIND_BUILD" "$PYTHON" -c '
import sys; sys.path.insert(0, "tests/badinput"); sys.path.insert(0, "tests")
import test_badinput as t
fx = t.Fixture("valgrind")
print(fx.write_job())') || return 1
    local log="$VALGRIND_BUILD/valgrind.log" tb=$SECONDS
    mpirun --oversubscribe -np 1 valgrind --tool=memcheck --error-exitcode=1 --track-origins=yes \
        --leak-check=full --errors-for-leak-kinds=definite --show-leak-kinds=definite \
        --suppressions="$src/tests/valgrind.supp" --num-callers=30 \
        "$VALGRIND_BUILD/daemon/projcompd" --cfg "$job" >"$log" 2>&1
    local rc=$?
    local errs
    errs=$(grep -Eo 'ERROR SUMMARY: [0-9]+ errors from [0-9]+ contexts' "$log" | tail -1)
    [ $rc -ne 0 ] && grep -E -A25 '^==[0-9]+== (Invalid|Conditional|Use of uninit|Syscall param|.*definitely lost)' "$log" | head -80
    summary+=("valgrind memcheck (np 1, 2-step compress): $( [ $rc -eq 0 ] && echo clean || echo "FAILED (exit $rc)" ) ($errs) $((SECONDS - tb)) s; log $log")
    rm -rf "$(dirname "$job")"
    return $rc
}

t_all=$SECONDS
case "$what" in
    asan) run_asan || status=1 ;;
    valgrind) run_valgrind || status=1 ;;
    all) run_asan || status=1; run_valgrind || status=1 ;;
    *) sed -n '2,14p' "$0"; exit 2 ;;
esac
echo "== sanitize.sh summary ($((SECONDS - t_all)) s)"
for s in "${summary[@]}"; do echo "  $s"; done
exit $status
