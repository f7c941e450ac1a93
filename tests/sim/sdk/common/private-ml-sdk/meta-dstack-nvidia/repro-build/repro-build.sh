#!/usr/bin/env bash
# zerog.compute simulation stand-in for meta-dstack-nvidia/repro-build/repro-build.sh.
#
# Same interface and control flow as upstream (set -e, -n = no second build, the build dir
# build-a, tarballs moved to dist/), but the two Docker steps are simulated by sim_build.py:
#  * "docker build" needs a Docker daemon usable by the invoking user, checked with
#    `docker info` (a failure ends the script with docker's own error and exit status), and
#    an x86_64 host (anything else fails like a linux/amd64 RUN step without emulation);
#  * "docker run" runs the simulated bitbake tasks as the invoking uid (root is refused by the
#    simulated poky sanity check) and resumes from its stamps in build-a after an interruption.
set -e

usage() {
    echo "Usage: $0 [-n]"
    echo "  -n: Don't check reproducibility"
}

SKIP_CHECK=0
while getopts ":n" opt; do
    case $opt in
        n) SKIP_CHECK=1 ;;
        \?)
            echo "Invalid option: -$OPTARG" >&2
            usage
            exit 1
            ;;
    esac
done

HERE=$(cd "$(dirname "$0")"; pwd)
REPO_ROOT=${REPO_ROOT:-$(dirname "$HERE")}
BUILD_A=$HERE/build-a
BUILD_B=$HERE/build-b
SIM="python3 $HERE/sim_build.py"

cd "$HERE"

# Stand-in for: docker build --platform linux/amd64 -t dstack-build -f Dockerfile.repro .
docker info > /dev/null
if [ "$(uname -m)" != "x86_64" ]; then
    echo "exec /bin/sh: exec format error" >&2
    echo "The command '/bin/sh -c apt-get update' returned a non-zero code: 1" >&2
    exit 1
fi
$SIM builder-image --meta-dir "$REPO_ROOT/$META_SUBDIR"

# Stand-in for: docker run --user $(id -u):$(id -g) -v <build dir>:/dstack-build ... build.sh guest
build_into() {
    mkdir -p "$1"
    $SIM container --build-dir "$1" --meta-dir "$REPO_ROOT/$META_SUBDIR" ${2:+"$2"}
}

build_into "$BUILD_A" --tar-release

DIST=$HERE/dist
mkdir -p "$DIST"
mv "$BUILD_A"/images/*.tar.gz "$DIST"/
if [ $SKIP_CHECK -eq 0 ]; then
    build_into "$BUILD_B"
    "$HERE/check.sh" "$BUILD_A" "$BUILD_B"
fi

echo "Release tar files are in $HERE/dist/"
