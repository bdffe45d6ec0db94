#!/usr/bin/env bash
# Builds emud's container image from this repository and Debian packages:
#
#   tools/image.sh                 build the binaries, the rootfs and the image
#   tools/image.sh --print-name    print the image name and exit
#   tools/image.sh --oci FILE      also save the image as an OCI archive
#
# 1. bazel builds emud-init, emud, emud-worker, emuctl, emud-device-plugin
#    (and emud-keeper where the tree has it), offline as always;
# 2. the Debian packages that provide their shared libraries are found with
#    ldd + dpkg -S on this (Debian 12) machine;
# 3. mmdebstrap --variant=extract unpacks exactly those packages and their
#    dependencies from the Debian bookworm archive into a root filesystem: no
#    shell, no apt, no dpkg - only runtime libraries;
# 4. the binaries go to /usr/bin (debug info stripped, symbols kept for
#    stack traces), /etc/passwd gets the non-root user emud (65532);
# 5. podman import makes the image (ENTRYPOINT emud-init -- emud, USER
#    65532). Kubernetes runs the DaemonSet as root (deploy/k8s: TAP
#    backends and socket ownership need it); plain `podman run` does not.
#
# Push it with: podman push IMAGE docker://REGISTRY/emud/emud:VERSION
# (README.md, "Container image").
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION="${EMUD_VERSION:-0.1.0}"
IMAGE="${EMUD_IMAGE:-localhost/emud/emud:${VERSION}}"
MIRROR="${EMUD_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SECURITY_MIRROR="${EMUD_DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"
IMAGE_UID=65532

oci=""
while (($#)); do
  case "$1" in
    --print-name) echo "$IMAGE"; exit 0 ;;
    --oci) oci="$2"; shift 2 ;;
    -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
    *) echo "image.sh: unknown argument '$1' (see tools/image.sh --help)" >&2; exit 1 ;;
  esac
done

for tool in mmdebstrap podman ldconfig strip; do
  if ! command -v "$tool" >/dev/null; then
    echo "image.sh: $tool is missing; run tools/setup.sh (it installs podman, runc, mmdebstrap)" >&2
    exit 1
  fi
done

targets=(//server:emud-init //server:emud //dataplane:emud-worker //ctl:emuctl
         //deviceplugin:emud-device-plugin)
# emud-keeper (issue 12: the fd keeper) ships too once the tree has it.
# BAZEL may carry startup options (e.g. another --output_base).
read -r -a bazel <<<"${BAZEL:-bazel}"
keeper=$("${bazel[@]}" query 'attr(name, "^emud-keeper$", kind(cc_binary, //...))' 2>/dev/null | head -1 || true)
if [[ -n "$keeper" ]]; then targets+=("$keeper"); fi
"${bazel[@]}" build "${targets[@]}" >&2
bindir=$("${bazel[@]}" info bazel-bin 2>/dev/null)

bins=()
for t in "${targets[@]}"; do
  pkg=${t#//}; pkg=${pkg%%:*}; name=${t##*:}
  bins+=("$bindir/$pkg/$name")
done

# Debian packages that own the shared libraries the binaries load.
declare -A pkgs=()
for b in "${bins[@]}"; do
  while read -r lib; do
    real=$(readlink -f "$lib")
    owner=""
    for cand in "$lib" "$real" "${real#/usr}" "/usr${lib}"; do
      owner=$(dpkg -S "$cand" 2>/dev/null | head -1 | cut -d: -f1) && [[ -n "$owner" ]] && break
    done
    if [[ -z "$owner" ]]; then
      echo "image.sh: no Debian package owns $lib (needed by $b)" >&2
      exit 1
    fi
    pkgs[$owner]=1
  done < <(ldd "$b" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}')
done
include=$(printf '%s,' "${!pkgs[@]}" | sort)
include=${include%,}
echo "image.sh: runtime packages: ${include//,/ }" >&2

work=$(mktemp -d /var/tmp/emud-image.XXXXXX)
trap 'rm -rf "$work"' EXIT
root="$work/rootfs"
mkdir -p "$root"

# Only the Debian archive is contacted (explicit mirrors: with none given and
# no terminal, mmdebstrap would read sources from stdin).
mmdebstrap --mode=root --variant=extract --include="$include" \
  --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/lintian/*' \
  bookworm "$root" \
  "deb $MIRROR bookworm main" \
  "deb $MIRROR bookworm-updates main" \
  "deb $SECURITY_MIRROR bookworm-security main" >&2

# extract mode does not honour path-exclude: trim by hand. Nothing in the
# image runs apt or dpkg.
rm -rf "$root"/usr/share/{doc,man,locale,lintian,info,bug} "$root"/var/lib/apt "$root"/var/cache/* \
  "$root"/etc/apt "$root"/var/lib/dpkg "$root"/var/log/*
install -d -m 0755 "$root/usr/bin" "$root/var/run/emud" "$root/dev/shm/emud"
install -d -m 1777 "$root/tmp"
for b in "${bins[@]}"; do
  install -m 0755 "$b" "$root/usr/bin/"
  strip --strip-debug "$root/usr/bin/$(basename "$b")"
done
cat >"$root/etc/passwd" <<EOF
root:x:0:0:root:/root:/usr/sbin/nologin
emud:x:${IMAGE_UID}:${IMAGE_UID}:emud:/nonexistent:/usr/sbin/nologin
EOF
cat >"$root/etc/group" <<EOF
root:x:0:
emud:x:${IMAGE_UID}:
EOF
chown "$IMAGE_UID:$IMAGE_UID" "$root/dev/shm/emud"
ldconfig -r "$root"

# Every library every binary needs resolves inside the rootfs; shared
# objects the packages brought but nothing loads (grpc's unsecure variant,
# libprotoc, glibc's gconv modules, ...) are dropped.
declare -A needed=()
for b in "${bins[@]}"; do
  name=$(basename "$b")
  if ! deps=$(chroot "$root" /lib64/ld-linux-x86-64.so.2 --list "/usr/bin/$name" 2>&1); then
    echo "image.sh: $name does not load in the image: $deps" >&2
    exit 1
  fi
  missing=$(grep 'not found' <<<"$deps" || true)
  if [[ -n "$missing" ]]; then
    echo "image.sh: $name lacks libraries in the image: $missing" >&2
    exit 1
  fi
  while read -r lib; do
    needed[$(readlink -f "$root$lib")]=1
  done < <(awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' <<<"$deps")
done
rm -rf "$root/usr/lib/x86_64-linux-gnu/gconv" "$root/usr/lib/x86_64-linux-gnu/audit" "$root/usr/share"
while IFS= read -r -d '' f; do
  [[ -n "${needed[$f]:-}" ]] || rm -f "$f"
done < <(find "$root/usr/lib" -type f -name '*.so*' -print0)
find "$root/usr/lib" -xtype l -delete  # symlinks to what was dropped
ldconfig -r "$root"
for b in "${bins[@]}"; do
  deps=$(chroot "$root" /lib64/ld-linux-x86-64.so.2 --list "/usr/bin/$(basename "$b")" 2>&1 || true)
  if grep -q 'not found' <<<"$deps"; then
    echo "image.sh: pruning removed a library $(basename "$b") needs: $deps" >&2
    exit 1
  fi
done

tar -C "$root" --numeric-owner -cf "$work/rootfs.tar" .
podman import \
  --change 'ENTRYPOINT ["/usr/bin/emud-init", "--", "/usr/bin/emud"]' \
  --change 'CMD ["--metrics-listen=0.0.0.0:9464"]' \
  --change "USER ${IMAGE_UID}:${IMAGE_UID}" \
  --change 'WORKDIR /' \
  --change 'STOPSIGNAL SIGTERM' \
  --change "LABEL org.opencontainers.image.title=emud org.opencontainers.image.version=${VERSION} org.opencontainers.image.source=tools/image.sh" \
  --message "emud ${VERSION} from $(git rev-parse --short HEAD 2>/dev/null || echo unknown)" \
  "$work/rootfs.tar" "$IMAGE" >&2

size=$(podman image inspect --format '{{.Size}}' "$IMAGE")
echo "image.sh: built $IMAGE ($((size / 1024 / 1024)) MiB uncompressed; $(printf '%s\n' "${!pkgs[@]}" | wc -l) Debian packages + their dependencies)" >&2
if [[ -n "$oci" ]]; then
  podman save --format oci-archive -o "$oci" "$IMAGE" >&2
  echo "image.sh: saved $oci ($(du -h "$oci" | cut -f1))" >&2
fi
echo "$IMAGE"
