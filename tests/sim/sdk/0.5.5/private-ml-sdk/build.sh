#!/usr/bin/env bash
# zerog.compute simulation stand-in for private-ml-sdk's build.sh at v0.5.5.
# Builds the guest images with meta-dstack-nvidia/repro-build/repro-build.sh -n, then unpacks
# every dist/dstack-*.tar.gz (except *-mr.tar.gz) into ./images/ relative to the current
# directory: rm -rf images/<name>, then tar -xzf <tarball> -C images/.
set -e

HERE=$(dirname "$(readlink -f "$0")")

export META_SUBDIR=meta-dstack-nvidia/
export IMAGE_NAME=dstack-nvidia-rootfs
export REPO_ROOT=$HERE

"$HERE/$META_SUBDIR/repro-build/repro-build.sh" -n

mkdir -p images/
for tarball in "$HERE/$META_SUBDIR"/repro-build/dist/dstack-*.tar.gz; do
    case "$tarball" in
        *-mr.tar.gz) continue ;;
    esac
    name=$(basename "$tarball" .tar.gz)
    rm -rf "images/$name"
    tar -xzf "$tarball" -C images/
done
