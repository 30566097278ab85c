#!/usr/bin/env bash
# Builds k8s-accelerator-devplugin.
#
#   ./build.sh static             the static musl binary, on this host, no docker
#   ./build.sh image [-t NAME]    the container image in two stages, for docker without multi-stage builds
#   ./build.sh image --binary B   the container image from a static binary built before (stage two alone)
#
# Run ./build.sh --help for the options.
set -euo pipefail

readonly TARGET=x86_64-unknown-linux-musl
readonly BINARY=k8s-accelerator-devplugin
DEFAULT_IMAGE=accelerator-device-plugin:latest
# The builder image of stage one (and of Dockerfile.multistage): any image with a Rust toolchain, Debian's
# apt and a shell, e.g. a mirror of this one in an air-gapped registry.
DEFAULT_BUILDER=rust:1.95-slim-bookworm

usage() {
    cat <<USAGE
Usage: ./build.sh [static | image [-t|--tag NAME:TAG] [--builder IMAGE | --binary PATH]] [-h|--help]

  static   Build the fully static binary on this host:
             target/$TARGET/release/$BINARY
           Needs cmake, g++, make, python3 (with venv) and rustup. Adds the Rust target $TARGET
           and installs the PyPI packages ziglang and cargo-zigbuild in a virtualenv under ~/.cache
           (or \$ZIG_VENV): zig is the C/C++ compiler for musl that gRPC's C++ core needs and Debian's
           musl-tools lacks.

  image    Build the container image without multi-stage support (docker < 17.05, no BuildKit):
             stage 1: Dockerfile.build builds the static binary with "./build.sh static" in a builder image;
             the binary is copied out with docker container create / docker cp;
             stage 2: Dockerfile copies it into a FROM scratch image.
           -t, --tag NAME:TAG   image name [default: $DEFAULT_IMAGE]
           --builder IMAGE      the builder image of stage 1 [default: $DEFAULT_BUILDER]
           --binary PATH        skip stage 1: put this static binary (from "./build.sh static") in the
                                image. Pulls nothing: works offline.

With no subcommand: image.
USAGE
}

die() {
    echo "build.sh: $*" >&2
    exit 2
}

# A step that failed (not the caller's arguments): exit 1.
fail() {
    echo "build.sh: $*" >&2
    exit 1
}

build_static() {
    command -v cargo >/dev/null || die "cargo is not installed"
    rustup target list --installed | grep -qx "$TARGET" || rustup target add "$TARGET"
    # zig and cargo-zigbuild live in a virtualenv of their own: nothing is installed system-wide.
    local venv="${ZIG_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/k8s-accelerator-devplugin/zig-venv}"
    if [ ! -x "$venv/bin/cargo-zigbuild" ]; then
        python3 -m venv "$venv"
        "$venv/bin/pip" install --quiet ziglang==0.17.0 cargo-zigbuild==0.24.0
    fi
    PATH="$venv/bin:$PATH"
    export PATH
    # gRPC's C core under zig's clang and musl:
    # - _LARGEFILE64_SOURCE: abseil uses off64_t, which newer musl declares only with this macro;
    # - ABSL_RANDOM_USE_GET_ENTROPY=1: abseil seeds from getentropy(2) instead of opening /dev/urandom,
    #   which does not exist in a FROM scratch image or an empty chroot (the server would abort on its first
    #   connection);
    # - -Wno-missing-template-arg-list-after-template-kw: newer clang rejects a `template` keyword in
    #   gRPC 1.56's basic_seq.h that g++ accepts.
    export CFLAGS_x86_64_unknown_linux_musl="-D_LARGEFILE64_SOURCE"
    export CXXFLAGS_x86_64_unknown_linux_musl="-D_LARGEFILE64_SOURCE -DABSL_RANDOM_USE_GET_ENTROPY=1 -Wno-missing-template-arg-list-after-template-kw"
    cargo zigbuild --locked --release --target "$TARGET" --bin "$BINARY"
    local out="${CARGO_TARGET_DIR:-target}/$TARGET/release/$BINARY"
    echo "built $out ($(stat -c %s "$out") bytes)"
}

# Removes the temporary container, directory and Dockerfile of build_image, whether it succeeded or not.
cleanup() {
    if [ -n "${container:-}" ]; then docker rm -f "$container" >/dev/null 2>&1 || true; fi
    if [ -n "${workdir:-}" ]; then rm -rf "$workdir"; fi
    if [ -n "${generated:-}" ]; then rm -f "$generated"; fi
}

build_image() {
    local tag=$DEFAULT_IMAGE builder_image=$DEFAULT_BUILDER binary="" builder_given=""
    while [ $# -gt 0 ]; do
        case "$1" in
            -t | --tag | --builder | --binary)
                [ $# -ge 2 ] && [ -n "$2" ] || die "$1 needs a value"
                case "$1" in
                    --builder) builder_image=$2 builder_given=1 ;;
                    --binary) binary=$2 ;;
                    *) tag=$2 ;;
                esac
                shift 2
                ;;
            --tag=* | --builder=* | --binary=*)
                local value=${1#*=}
                [ -n "$value" ] || die "${1%%=*} needs a value"
                case "$1" in
                    --builder=*) builder_image=$value builder_given=1 ;;
                    --binary=*) binary=$value ;;
                    *) tag=$value ;;
                esac
                shift
                ;;
            *) die "unknown option $1 (see --help)" ;;
        esac
    done
    if [ -n "$binary" ]; then
        [ -z "$builder_given" ] || die "--builder and --binary exclude each other"
        # Relative to where build.sh was called from, not to the repository it changes into.
        case "$binary" in /*) ;; *) binary="$CALLER_DIR/$binary" ;; esac
        [ -f "$binary" ] && [ -x "$binary" ] || die "--binary: $binary is not an executable file"
        [ "$(od -An -tx1 -N4 "$binary" | tr -d ' \n')" = 7f454c46 ] || die "--binary: $binary is not an ELF binary"
    fi
    command -v docker >/dev/null || die "docker is not installed"

    # Globals, not locals: the EXIT trap runs after this function has returned.
    workdir=$(mktemp -d)
    container=""
    generated=""
    trap cleanup EXIT

    if [ -n "$binary" ]; then
        echo "stage 1: skipped, using $binary"
        cp "$binary" "$workdir/$BINARY"
    else
        local builder="$tag-builder"
        builder=${builder//:/-}
        echo "stage 1: building the static binary in $builder (from $builder_image)"
        local dockerfile=Dockerfile.build
        grep -qxF "FROM $DEFAULT_BUILDER" Dockerfile.build || die "Dockerfile.build has no line FROM $DEFAULT_BUILDER"
        if [ "$builder_image" != "$DEFAULT_BUILDER" ]; then
            # Docker before 17.05 has no ARG before FROM: the builder image is written into a copy of
            # Dockerfile.build, inside the build context as such docker requires. Plain string comparison,
            # no sed: an image name may hold characters special to it.
            dockerfile=.Dockerfile.build.$$
            generated=$dockerfile
            local line
            while IFS= read -r line; do
                if [ "$line" = "FROM $DEFAULT_BUILDER" ]; then line="FROM $builder_image"; fi
                printf '%s\n' "$line"
            done < Dockerfile.build > "$dockerfile"
        fi
        docker build --force-rm -f "$dockerfile" -t "$builder" . ||
            fail "stage 1 failed. Without access to $builder_image, build the binary on the host with" \
                "./build.sh static and make the image with ./build.sh image --binary PATH"
        container=$(docker container create "$builder")
        docker cp "$container:/src/target/$TARGET/release/$BINARY" "$workdir/$BINARY"
        docker rm -f "$container" >/dev/null
        container=""
    fi

    echo "stage 2: building $tag from scratch"
    cp Dockerfile "$workdir/Dockerfile"
    docker build --force-rm -t "$tag" "$workdir"
    echo "built $tag"
}

main() {
    local command=image
    case "${1:-}" in
        -h | --help)
            usage
            return 0
            ;;
        static | image)
            command=$1
            shift
            ;;
        "") ;;
        -*) ;;
        *) die "unknown subcommand $1 (see --help)" ;;
    esac
    case "$command" in
        static)
            [ $# -eq 0 ] || die "static takes no options"
            build_static
            ;;
        image) build_image "$@" ;;
    esac
}

CALLER_DIR=$PWD
readonly CALLER_DIR
cd "$(dirname "$0")"
main "$@"
