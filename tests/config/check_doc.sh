#!/bin/sh
# Fails when docs/config.md differs from what config-doc generates from the key table.
# usage: check_doc.sh CONFIG_DOC DOCS_CONFIG_MD
gen="$1"
doc="$2"
tmp=$(mktemp) || exit 1
trap 'rm -f "$tmp"' EXIT
"$gen" >"$tmp" || { echo "config-doc failed"; exit 1; }
if ! diff -u "$doc" "$tmp"; then
    echo "docs/config.md is stale: regenerate it with \`build/tests/config/config-doc > docs/config.md\`"
    exit 1
fi
echo "docs/config.md is up to date"
