#!/usr/bin/env bash
# zerog.compute simulation stand-in for repro-build/check.sh: compare the image directories of
# two build dirs file by file.
set -e
status=0
for dir in "$1"/images/*/; do
    name=$(basename "$dir")
    if diff -r "$1/images/$name" "$2/images/$name" > /dev/null; then
        echo "$name: reproducible"
    else
        echo "$name: NOT reproducible"
        status=1
    fi
done
exit $status
