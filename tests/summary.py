"""Print the closing line 'N passed, N failed, N skipped' from meson's testlog.json,
plus results given as NAME=STATUS arguments (0 passed, 77 skipped, else failed)."""
import json
import sys

counts = {"passed": 0, "failed": 0, "skipped": 0}
with open(sys.argv[1]) as f:
    for line in f:
        line = line.strip()
        if not line:
            continue
        result = json.loads(line)["result"]
        if result in ("OK", "EXPECTEDFAIL"):
            counts["passed"] += 1
        elif result == "SKIP":
            counts["skipped"] += 1
        else:
            counts["failed"] += 1
for arg in sys.argv[2:]:
    name, _, status = arg.partition("=")
    key = "passed" if status == "0" else "skipped" if status == "77" else "failed"
    counts[key] += 1
    print(f"{name}: {key}")
print(f"{counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped")
