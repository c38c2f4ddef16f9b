#!/usr/bin/env bash
# The packed engine on arm64, proven bit for bit against x86 (issue 17).
#
#   sudo nice -n 19 benchmarks/arm_conformance.sh [ARM_ROOT] [PHASE...]
#
# 1. root:   an arm64 Debian bookworm root (Python 3.11) built with
#            `debootstrap --foreign`, its packages unpacked natively (or configured
#            by a qemu-aarch64-static second stage), in ARM_ROOT (default
#            /work/arm-root); reused when already built.
# 2. venv:   a venv in the root with the aarch64 wheels of numpy and numba, at the
#            versions of the x86 side (pip runs inside the emulated root).
# 3. wheels: which aarch64 wheels PyPI has (numpy, numba, llvmlite; LCE 0.16.0).
# 4. export: on x86 (the binface venv, torch): every binary zoo model -> .bfp, and the
#            x86 engine's embeddings and per-binary-layer integer sums for one fixed
#            random batch (benchmarks/arm_conformance.py export).
# 5. check:  under qemu-aarch64 user mode, a torch-free copy of src/binface runs the
#            same files on the same batch and compares (arm_conformance.py check).
# 6. report: docs/results/arm.json and docs/results/arm.md.
#
# PHASE... runs only those phases (default: all, in order). Environment:
#   ARM_ROOT        the arm64 root (or the first argument)
#   ARM_MODELS      comma-separated models (default: every model of family "binary")
#   ARM_BATCH       batch size of the random input (default 2)
#   BINFACE_PYTHON  the x86 Python with torch and binface's dependencies
#                   (default: .venv/bin/python of this checkout, else python3)
#   DEBIAN_MIRROR   default http://deb.debian.org/debian
#   ARM_SECOND_STAGE 1: configure the root with debootstrap's second stage under qemu
#                   (80+ min); default 0: unpack the packages natively (a minute)
# Needs root (debootstrap, chroot, mount) and the qemu-user-static, debootstrap and
# binfmt-support packages. Timings under emulation mean nothing: no latency is reported,
# only each phase's wall time.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
COMMAND="benchmarks/arm_conformance.sh${*:+ $*}"
for v in ARM_ROOT ARM_MODELS ARM_BATCH BINFACE_PYTHON DEBIAN_MIRROR ARM_SECOND_STAGE; do
    [[ -z ${!v:-} ]] || COMMAND="$v=${!v} $COMMAND"
done
if [[ $# -gt 0 && $1 == /* ]]; then
    ARM_ROOT=$1
    shift
fi
ROOT=${ARM_ROOT:-/work/arm-root}
ROOT=${ROOT%/}
[[ $ROOT == /?* ]] || { echo "ARM_ROOT must be an absolute path other than /" >&2; exit 1; }
PHASES=("$@")
[[ ${#PHASES[@]} -gt 0 ]] || PHASES=(root venv wheels export check report)
SUITE=bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
BATCH=${ARM_BATCH:-2}
MODELS=${ARM_MODELS:-}
if [[ -z ${BINFACE_PYTHON:-} ]]; then
    if [[ -x $REPO/.venv/bin/python ]]; then BINFACE_PYTHON=$REPO/.venv/bin/python
    else BINFACE_PYTHON=$(command -v python3); fi
fi
PY=$BINFACE_PYTHON
"$PY" -c "import numba, numpy" 2> /dev/null \
    || { echo "$PY has no numpy / numba: set BINFACE_PYTHON to binface's venv" >&2; exit 1; }
DATA=/opt/arm-conformance          # inside the root: files, reference, the source copy
VENV=/opt/binface-venv             # inside the root
WORK=$REPO/benchmarks/.arm         # x86 side: phase log, wheel check (git-ignored)
QEMU=$(command -v qemu-aarch64-static || true)
export PYTHONPATH=$REPO/src        # this checkout's binface, whatever the venv has installed

log() { printf '[arm %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }
want() { local p; for p in "${PHASES[@]}"; do [[ $p == "$1" ]] && return 0; done; return 1; }

mkdir -p "$WORK"
if want root; then : > "$WORK/phases.txt"; fi  # a full run: its own phase times
[[ $(id -u) -eq 0 ]] || die "run as root (debootstrap, chroot, mount)"
[[ -n $QEMU ]] || die "qemu-aarch64-static not found (apt-get install qemu-user-static)"

# ------------------------------------------------------------------ helpers
ensure_binfmt() {
    # the kernel must hand aarch64 ELF files to qemu: every exec inside the root
    if [[ ! -e /proc/sys/fs/binfmt_misc/status ]]; then
        mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
    fi
    if [[ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]]; then
        update-binfmts --enable qemu-aarch64 || die "cannot register qemu-aarch64 (binfmt-support)"
    fi
    grep -q '^enabled' /proc/sys/fs/binfmt_misc/qemu-aarch64 \
        || die "binfmt entry qemu-aarch64 is disabled"
}

install_qemu() {
    # the interpreter inside the root too, for a binfmt entry without the F flag
    install -D -m 755 "$QEMU" "$ROOT/usr/bin/qemu-aarch64-static"
    install -D -m 755 "$QEMU" "$ROOT/usr/libexec/qemu-binfmt/aarch64-binfmt-P"
}

MOUNTED=()
mount_root() {
    local d
    for d in proc dev sys; do
        if ! mountpoint -q "$ROOT/$d"; then
            mkdir -p "$ROOT/$d"
            case $d in
                proc) mount -t proc proc "$ROOT/proc" ;;
                *) mount --bind "/$d" "$ROOT/$d" ;;
            esac
            MOUNTED+=("$ROOT/$d")
        fi
    done
    cp -L /etc/resolv.conf "$ROOT/etc/resolv.conf"
}
umount_root() {
    local i
    for ((i = ${#MOUNTED[@]} - 1; i >= 0; i--)); do umount -l "${MOUNTED[i]}" || true; done
    MOUNTED=()
}
trap umount_root EXIT

in_root() {  # a clean environment, no terminal: nothing of the x86 side leaks in
    chroot "$ROOT" /usr/bin/env -i HOME=/root LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive \
        PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin "$@" < /dev/null
}

phase_begin() { PHASE_T0=$SECONDS; log "phase $1"; }
phase_end() {  # seconds per phase, for the report (not latency: build and run times)
    local dt=$((SECONDS - PHASE_T0))
    echo "$1 $dt" >> "$WORK/phases.txt"
    log "phase $1 done in ${dt}s"
}

# ------------------------------------------------------------------ 1. root
if want root; then
    phase_begin root
    if [[ -f $ROOT/.binface-root-ok ]]; then
        log "reusing $ROOT"
    else
        command -v debootstrap > /dev/null || die "debootstrap not found"
        ensure_binfmt
        if mountpoint -q "$ROOT/proc" || mountpoint -q "$ROOT/dev" || mountpoint -q "$ROOT/sys"
        then
            die "$ROOT has mounts left over; unmount them first"
        fi
        rm -rf "$ROOT"
        mkdir -p "$ROOT"
        log "debootstrap --foreign $SUITE arm64 into $ROOT"
        debootstrap --arch=arm64 --foreign --variant=minbase \
            --include=python3,python3-venv,python3-pip,ca-certificates \
            "$SUITE" "$ROOT" "$MIRROR"
        install_qemu
        # No second stage: it runs every package's maintainer scripts under emulation
        # (82 min here). The first stage has downloaded the packages and unpacked only
        # the required ones; unpacking the rest natively gives a root in which Python,
        # venv and pip run (nothing here needs a configured package). Set
        # ARM_SECOND_STAGE=1 for a fully configured root.
        if [[ ${ARM_SECOND_STAGE:-0} == 1 ]]; then
            log "second stage under qemu-aarch64"
            # stdin not a terminal: a maintainer script reading it from the background
            # would stop the whole second stage (SIGTTIN)
            in_root /debootstrap/debootstrap --second-stage
            how="second stage under qemu"
        else
            log "unpacking the downloaded packages natively (no second stage)"
            for deb in "$ROOT"/var/cache/apt/archives/*.deb; do dpkg-deb -x "$deb" "$ROOT"; done
            how="unpacked natively"
        fi
        echo "$SUITE arm64 built $(date -u +%FT%TZ) in $((SECONDS - PHASE_T0)) s ($how)" \
            > "$ROOT/.binface-root-ok"
    fi
    phase_end root
fi

[[ -f $ROOT/.binface-root-ok ]] || die "no arm64 root in $ROOT (run the root phase)"
ensure_binfmt
install_qemu

x86_version() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))"; }

# ------------------------------------------------------------------ 2. venv
if want venv; then
    phase_begin venv
    NUMPY_V=$(x86_version numpy)
    NUMBA_V=$(x86_version numba)
    STAMP="numpy==$NUMPY_V numba==$NUMBA_V"
    if [[ -f $ROOT$VENV/.binface-venv-ok && $(cat "$ROOT$VENV/.binface-venv-ok") == "$STAMP" ]]
    then
        log "reusing $VENV ($STAMP)"
    else
        mount_root
        rm -rf "${ROOT:?}$VENV"
        in_root python3 -m venv "$VENV"
        # the host's CA bundle (a TLS-inspecting proxy's CA included, where there is one)
        HOST_CA=${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}
        cert=()
        if [[ -f $HOST_CA ]]; then
            install -D -m 644 "$HOST_CA" "$ROOT/etc/ssl/binface-host-ca.crt"
            cert=(--cert /etc/ssl/binface-host-ca.crt)
        fi
        log "pip install $STAMP (aarch64 wheels only) inside the root"
        in_root "$VENV/bin/pip" install --no-cache-dir --disable-pip-version-check "${cert[@]}" \
            --only-binary=:all: "numpy==$NUMPY_V" "numba==$NUMBA_V" \
            2>&1 | tee "$WORK/pip-arm.log"
        in_root "$VENV/bin/python" -c "import numpy, numba; print(numpy.__version__, numba.__version__)"
        echo "$STAMP" > "$ROOT$VENV/.binface-venv-ok"
        echo "built $(date -u +%FT%TZ) in $((SECONDS - PHASE_T0)) s" > "$ROOT$VENV/.binface-venv-built"
        umount_root
    fi
    phase_end venv
fi

# ------------------------------------------------------------------ 3. wheels on PyPI
if want wheels; then
    phase_begin wheels
    out=$WORK/wheels
    rm -rf "$out"
    mkdir -p "$out"
    : > "$out/checks.tsv"
    check_wheel() {  # spec platform: "found FILE" or "none", and pip's last line
        local spec=$1 plat=$2 d rc line
        d=$(mktemp -d)
        set +e
        line=$("$PY" -m pip download --platform "$plat" --only-binary=:all: --no-deps \
            --disable-pip-version-check -d "$d" "$spec" 2>&1 | tail -n 1)
        rc=${PIPESTATUS[0]}
        set -e
        local files
        files=$(cd "$d" && ls -1 2>/dev/null | tr '\n' ' ')
        printf '%s\t%s\t%s\t%s\t%s\n' "$spec" "$plat" "$rc" "${files% }" "$line" \
            >> "$out/checks.tsv"
        rm -rf "$d"
        log "pip download --platform $plat $spec: rc=$rc ${files:-nothing}"
    }
    NUMPY_V=$(x86_version numpy)
    NUMBA_V=$(x86_version numba)
    LLVMLITE_V=$(x86_version llvmlite)
    check_wheel larq-compute-engine==0.16.0 manylinux2014_aarch64    # the issue's command
    check_wheel larq-compute-engine==0.16.0 manylinux_2_28_aarch64   # any glibc <= 2.28
    check_wheel larq-compute-engine==0.16.0 macosx_12_0_arm64        # its one arm64 wheel
    for spec in "numpy==$NUMPY_V" "numba==$NUMBA_V" "llvmlite==$LLVMLITE_V"; do
        check_wheel "$spec" manylinux2014_aarch64
        check_wheel "$spec" manylinux_2_28_aarch64
    done
    check_wheel "numba==0.60.0" manylinux2014_aarch64                # pyproject's floor
    phase_end wheels
fi

# ------------------------------------------------------------------ 4. export (x86)
if want export; then
    phase_begin export
    rm -rf "${ROOT:?}$DATA"
    mkdir -p "$ROOT$DATA/src"
    # a copy of the source without __pycache__: the ARM side compiles and caches its own
    tar -C "$REPO/src" --exclude=__pycache__ --exclude='*.egg-info' -cf - binface \
        | tar -C "$ROOT$DATA/src" -xf -
    cp "$REPO/benchmarks/arm_conformance.py" "$ROOT$DATA/"
    args=(export --data "$ROOT$DATA" --batch "$BATCH")
    [[ -z $MODELS ]] || args+=(--models "$MODELS")
    NUMBA_CACHE_DIR=$WORK/numba-cache-x86 "$PY" "$REPO/benchmarks/arm_conformance.py" "${args[@]}"
    phase_end export
fi

# ------------------------------------------------------------------ 5. check (arm64)
if want check; then
    phase_begin check
    [[ -f $ROOT$DATA/reference.json ]] || die "no reference in $ROOT$DATA (run the export phase)"
    mount_root
    # numba's cache for the ARM side lives in the root, apart from the x86 caches
    check_rc=0
    in_root NUMBA_CACHE_DIR=/var/cache/binface-numba PYTHONPATH=$DATA/src \
        OPENBLAS_NUM_THREADS=1 NUMBA_NUM_THREADS=1 \
        "$VENV/bin/python" "$DATA/arm_conformance.py" check --data "$DATA" || check_rc=$?
    umount_root
    [[ -f $ROOT$DATA/arm_result.json ]] || die "the check wrote no result (exit $check_rc)"
    phase_end check
fi

# ------------------------------------------------------------------ 6. report
if want report; then
    phase_begin report
    "$PY" "$REPO/benchmarks/arm_conformance.py" report --data "$ROOT$DATA" \
        --wheels "$WORK/wheels/checks.tsv" --phases "$WORK/phases.txt" \
        --qemu "$("$QEMU" --version | head -n 1)" --root "$ROOT" \
        --command "$COMMAND" --pip-log "$WORK/pip-arm.log" \
        --json "$REPO/docs/results/arm.json" --md "$REPO/docs/results/arm.md"
    phase_end report
fi

if [[ ${check_rc:-0} -ne 0 ]]; then
    die "not conformant on arm64 (check exited $check_rc); see docs/results/arm.md"
fi
log "done"
