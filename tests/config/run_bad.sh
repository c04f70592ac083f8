#!/bin/sh
# Runs config-check over every tests/config/bad/*.yaml. Each file carries
#   # expect: <substring of the error message>
#   # args: <extra config-check arguments>   (optional: --set, --model, --ranks)
# and must be rejected with a message containing the substring.
# usage: run_bad.sh CONFIG_CHECK BAD_DIR
check="$1"
dir="$2"
fail=0
n=0
for f in "$dir"/*.yaml; do
    n=$((n + 1))
    expect=$(sed -n 's/^# expect: //p' "$f" | head -n 1)
    args=$(sed -n 's/^# args: //p' "$f" | head -n 1)
    if [ -z "$expect" ]; then
        echo "FAIL $f: no '# expect:' line"
        fail=1
        continue
    fi
    # shellcheck disable=SC2086
    out=$("$check" "$f" $args 2>&1)
    rc=$?
    if [ "$rc" -ne 1 ]; then
        echo "FAIL $(basename "$f"): exit $rc (want 1), output: $out"
        fail=1
        continue
    fi
    case "$out" in
    *"$expect"*) echo "ok   $(basename "$f"): $out" ;;
    *)
        echo "FAIL $(basename "$f"): want substring: $expect"
        echo "     got: $out"
        fail=1
        ;;
    esac
done
if [ "$n" -lt 30 ]; then
    echo "FAIL: only $n bad files found in $dir"
    fail=1
fi
exit $fail
