#!/usr/bin/env bash
# zerog.compute simulation stand-in for private-ml-sdk's build.sh in the 0.3 era.
# Builds the guest images with meta-dstack-nvidia/repro-build/repro-build.sh -n, then unpacks
# every file of dist/ into its own ./images/<name>/ relative to the current directory (the 0.3
# tarballs were made from "."): rm -rf images/<name>, mkdir -p images/<name>, tar -xzf into it.
set -e

HERE=$(dirname "$(readlink -f "$0")")

export META_SUBDIR=meta-dstack-nvidia/
export IMAGE_NAME=dstack-nvidia-rootfs
export REPO_ROOT=$HERE

"$HERE/$META_SUBDIR/repro-build/repro-build.sh" -n

for tarball in "$HERE/$META_SUBDIR"/repro-build/dist/*; do
    name=$(basename "$tarball")
    name=${name%.tar.gz}
    rm -rf "images/$name"
    mkdir -p "images/$name"
    tar -xzf "$tarball" -C "images/$name"
done
