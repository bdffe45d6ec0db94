#!/usr/bin/env bash
# Builds the real-VMM test harness into a cache outside the repository:
#   - QEMU (qemu-system-x86_64 with the vfio-user-pci client) from Debian sid's
#     source package, configured for TCG/KVM x86_64 only;
#   - SeaBIOS (Debian sid/trixie .deb) and the linuxboot_dma.bin option ROM
#     (built from the QEMU source's pc-bios/optionrom);
#   - the guest: a Debian bookworm kernel and its iavf.ko (from
#     linux-image-*-amd64-unsigned; also 8021q and vfio-pci), busybox-static,
#     ethtool, and tests/vmm/guest/init packed as an initramfs; a second
#     initramfs adds the host's DPDK testpmd (dpdk-dev) for the dpdk-* scenarios.
#
# usage: tests/vmm/build_harness.sh            (env EMUD_VMM_CACHE, default /var/cache/emud-vmm)
#
# Each component lives in a directory named by a hash of its inputs (the text of
# the shell function that builds it, the Debian package versions it uses, the
# files it packs), so it is rebuilt only when an input changes; the last line
# printed is the path of an env file (also $EMUD_VMM_CACHE/harness.env) that
# tests/vmm/run.sh sources.
#
# Debian archives are reached through a private apt configuration under the
# cache (bookworm, trixie, sid; sid also as deb-src): the host's apt sources are
# never modified and no sid/trixie binary is installed into the system. Host
# build dependencies come from the host's own (bookworm) sources.
#
# Exit codes: 0 ready; 2 "harness unavailable: <package>" (a Debian package or
# the network could not be obtained); 1 any other failure.
set -euo pipefail
shopt -s inherit_errexit   # errexit inside $(...) too (components build in one)

HERE="$(cd "$(dirname "$0")" && pwd)"
CACHE="${EMUD_VMM_CACHE:-/var/cache/emud-vmm}"
# QEMU source version: the highest 10.2.x in sid's Sources (known to work),
# else the highest >= 10.1. EMUD_VMM_QEMU_VERSION pins an exact Debian version.
QEMU_SERIES="${EMUD_VMM_QEMU_SERIES:-10.2}"
PAYLOAD_MIB="${EMUD_VMM_PAYLOAD_MIB:-4}"   # deterministic payload file in the initramfs
JOBS="$(nproc)"

log() { printf '[build_harness %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
unavailable() { echo "harness unavailable: $1" >&2; exit 2; }
die() { echo "build_harness: $*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || die "needs root (apt-get for build dependencies)"
mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock 9 || die "cannot lock $CACHE/.lock"

# Leftovers of an interrupted or failed build (we hold the lock).
for d in "$CACHE"/*-*/ "$CACHE"/*.work/; do
  d=${d%/}
  [[ -d $d && $d != "$CACHE/apt" && $d != "$CACHE/debs" ]] || continue
  [[ $d == *.work || ! -e $d/.complete ]] && { echo "[build_harness] removing incomplete $d" >&2; rm -rf "$d"; }
done

# ---------------------------------------------------------------- private apt
APTDIR="$CACHE/apt"
mkdir -p "$APTDIR/etc" "$APTDIR/lists/partial" "$APTDIR/cache/archives/partial" "$CACHE/debs"
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
cat >"$APTDIR/etc/sources.list.new" <<EOF
deb [signed-by=$KEYRING] http://deb.debian.org/debian bookworm main
deb [signed-by=$KEYRING] http://deb.debian.org/debian trixie main
deb [signed-by=$KEYRING] http://deb.debian.org/debian sid main
deb-src [signed-by=$KEYRING] http://deb.debian.org/debian sid main
EOF
if ! cmp -s "$APTDIR/etc/sources.list.new" "$APTDIR/etc/sources.list"; then
  mv "$APTDIR/etc/sources.list.new" "$APTDIR/etc/sources.list"
  rm -f "$APTDIR/updated"
else
  rm -f "$APTDIR/etc/sources.list.new"
fi
APTOPTS=(-o "Dir::Etc::SourceList=$APTDIR/etc/sources.list" -o Dir::Etc::SourceParts=/dev/null
  -o "Dir::State::Lists=$APTDIR/lists" -o "Dir::Cache=$APTDIR/cache"
  -o Dir::Etc::Preferences=/dev/null -o Dir::Etc::PreferencesParts=/dev/null
  -o APT::Sandbox::User=root -o Debug::NoLocking=1 -o Acquire::Retries=3)
papt_get() { apt-get -q "${APTOPTS[@]}" "$@"; }
papt_cache() { apt-cache "${APTOPTS[@]}" "$@"; }

# Refresh the private lists when older than 12 h (or never fetched). If the
# refresh fails but lists exist, go on with them (offline rebuild of a cached
# harness); with no lists at all the harness is unavailable.
if [[ -z $(find "$APTDIR/updated" -mmin -720 2>/dev/null) ]]; then
  log "apt: refreshing private bookworm/trixie/sid lists in $APTDIR"
  if papt_get update >"$APTDIR/update.log" 2>&1; then
    touch "$APTDIR/updated"
  elif [[ -e "$APTDIR/updated" ]]; then
    log "apt: update failed (see $APTDIR/update.log); using the lists from $(date -r "$APTDIR/updated")"
  else
    tail -5 "$APTDIR/update.log" >&2
    unavailable "deb.debian.org package lists (apt-get update failed, see $APTDIR/update.log)"
  fi
fi

# Candidate version of binary package $1 in suite $2 (empty if none).
pkg_version() {
  papt_cache madison "$1" 2>/dev/null |
    awk -F'|' -v s="$2/main amd64 Packages" '{gsub(/^ +| +$/,"",$2)} index($3, s) {print $2; exit}'
}

# Downloads binary package $1 (version $2) into $CACHE/debs, prints the .deb path.
fetch_deb() {
  local pkg=$1 ver=$2 f
  # (apt names files pkg_EPOCH%3aVERSION_arch.deb when the version has an epoch)
  f=$(ls "$CACHE"/debs/"${pkg}"_*"${ver#*:}"_*.deb 2>/dev/null | head -1 || true)
  if [[ -z $f ]]; then
    log "apt: downloading $pkg $ver"
    (cd "$CACHE/debs" && papt_get download "$pkg=$ver" >/dev/null 2>"$CACHE/debs/$pkg.err") ||
      { cat "$CACHE/debs/$pkg.err" >&2; unavailable "$pkg=$ver"; }
    f=$(ls "$CACHE"/debs/"${pkg}"_*"${ver#*:}"_*.deb 2>/dev/null | head -1 || true)
    [[ -n $f ]] || unavailable "$pkg=$ver"
    rm -f "$CACHE/debs/$pkg.err"
  fi
  echo "$f"
}

# ---------------------------------------------------------------- versions
QEMU_VER="${EMUD_VMM_QEMU_VERSION:-}"
if [[ -z $QEMU_VER ]]; then
  mapfile -t qv < <(papt_cache showsrc qemu 2>/dev/null | sed -n 's/^Version: //p' | sort -u)
  pick=""
  for v in "${qv[@]}"; do
    up=${v#*:}; up=${up%%+*}; up=${up%%-*}
    if [[ $up == "$QEMU_SERIES".* ]] && { [[ -z $pick ]] || dpkg --compare-versions "$v" gt "$pick"; }; then pick=$v; fi
  done
  if [[ -z $pick ]]; then
    for v in "${qv[@]}"; do
      if dpkg --compare-versions "$v" ge 1:10.1 && { [[ -z $pick ]] || dpkg --compare-versions "$v" gt "$pick"; }; then pick=$v; fi
    done
  fi
  QEMU_VER=$pick
fi
[[ -n $QEMU_VER ]] || unavailable "qemu (source package >= 10.1 in sid)"

SEABIOS_VER=$(pkg_version seabios sid); [[ -n $SEABIOS_VER ]] || SEABIOS_VER=$(pkg_version seabios trixie)
[[ -n $SEABIOS_VER ]] && dpkg --compare-versions "$SEABIOS_VER" ge 1.16.3 || unavailable "seabios (>= 1.16.3, sid or trixie)"
MESON_VER=$(pkg_version meson trixie); [[ -n $MESON_VER ]] || MESON_VER=$(pkg_version meson sid)
[[ -n $MESON_VER ]] || unavailable "meson (>= 1.5, trixie)"
PYCOTAP_VER=$(pkg_version python3-pycotap trixie); [[ -n $PYCOTAP_VER ]] || PYCOTAP_VER=$(pkg_version python3-pycotap sid)
[[ -n $PYCOTAP_VER ]] || unavailable "python3-pycotap (trixie)"
BUSYBOX_VER=$(pkg_version busybox-static bookworm); [[ -n $BUSYBOX_VER ]] || unavailable "busybox-static (bookworm)"
ETHTOOL_VER=$(pkg_version ethtool bookworm); [[ -n $ETHTOOL_VER ]] || unavailable "ethtool (bookworm)"
LIBMNL_VER=$(pkg_version libmnl0 bookworm); [[ -n $LIBMNL_VER ]] || unavailable "libmnl0 (bookworm)"
# The guest kernel: what bookworm's linux-image-amd64 points at, unsigned flavour.
KMETA_VER=$(pkg_version linux-image-amd64 bookworm)
KIMG=$(papt_cache show "linux-image-amd64=$KMETA_VER" 2>/dev/null | sed -n 's/^Depends:.*\(linux-image-[0-9][^ ,]*-amd64\).*/\1/p' | head -1)
[[ -n $KIMG ]] || unavailable "linux-image-amd64 (bookworm)"
KPKG="$KIMG-unsigned"
KVER=$(pkg_version "$KPKG" bookworm); [[ -n $KVER ]] || unavailable "$KPKG (bookworm)"
KREL=${KIMG#linux-image-}

log "inputs: qemu $QEMU_VER (sid source), seabios $SEABIOS_VER, meson $MESON_VER, pycotap $PYCOTAP_VER"
log "inputs: guest $KPKG $KVER, busybox-static $BUSYBOX_VER, ethtool $ETHTOOL_VER"

key() { sha256sum | cut -c1-16; }

# ---------------------------------------------------------------- host build deps
HOST_DEPS=(build-essential gcc-multilib pkg-config ninja-build python3-venv libglib2.0-dev libpixman-1-dev
  zlib1g-dev cpio kmod xz-utils zstd)
ensure_host_deps() {  # [PKG...] (default: HOST_DEPS)
  local missing=() p want=("$@")
  ((${#want[@]} > 0)) || want=("${HOST_DEPS[@]}")
  for p in "${want[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  ((${#missing[@]} == 0)) && return 0
  log "host: apt-get install ${missing[*]} (from the host's bookworm sources)"
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" \
      >"$CACHE/host-deps.log" 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get update -q >>"$CACHE/host-deps.log" 2>&1 || true
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" \
        >>"$CACHE/host-deps.log" 2>&1; then
      tail -5 "$CACHE/host-deps.log" >&2
      for p in "${missing[@]}"; do
        apt-cache show "$p" >/dev/null 2>&1 || unavailable "$p"
      done
      unavailable "${missing[*]}"
    fi
  fi
}

# DPDK for the dpdk-* scenarios: the host's own bookworm DPDK (dpdk-dev:
# dpdk-testpmd, its libraries and PMD plugins), installed from the host's
# sources if missing.
ensure_host_deps dpdk-dev
DPDK_VER=$(dpkg-query -W -f='${Version}' dpdk-dev 2>/dev/null || true)
DPDK_PLUGIN_DIR=/usr/lib/x86_64-linux-gnu/dpdk/pmds-23.0
[[ -n $DPDK_VER && -x /usr/bin/dpdk-testpmd && -e $DPDK_PLUGIN_DIR/librte_net_iavf.so ]] ||
  unavailable "dpdk-dev (dpdk-testpmd and $DPDK_PLUGIN_DIR/librte_net_iavf.so)"

# Packs an unpacked Debian python package ($1 = dist-packages dir, $2 = name,
# $3 = version) as a pure-python wheel in $4 (what QEMU's mkvenv installs
# offline from python/wheels).
make_wheel() {
  python3 - "$@" <<'PY'
import base64, hashlib, os, sys, zipfile
src, name, version, outdir = sys.argv[1:5]
info = None
for d in os.listdir(src):
    if d.startswith(name + "-") and (d.endswith(".dist-info") or d.endswith(".egg-info")):
        info = os.path.join(src, d)
assert info, "no metadata for " + name
meta_file = os.path.join(info, "METADATA" if info.endswith(".dist-info") else "PKG-INFO")
tops = [l.strip() for l in open(os.path.join(info, "top_level.txt")) if l.strip()]
di = f"{name}-{version}.dist-info"
whl = os.path.join(outdir, f"{name}-{version}-py3-none-any.whl")
record = []
with zipfile.ZipFile(whl, "w", zipfile.ZIP_DEFLATED) as z:
    def add(arc, data):
        z.writestr(arc, data)
        h = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{arc},sha256={h},{len(data)}")
    for top in tops:
        p = os.path.join(src, top)
        if os.path.isdir(p):
            for root, dirs, files in os.walk(p):
                dirs[:] = [d for d in dirs if d != "__pycache__"]
                for f in sorted(files):
                    full = os.path.join(root, f)
                    add(os.path.relpath(full, src), open(full, "rb").read())
        elif os.path.exists(p + ".py"):
            add(top + ".py", open(p + ".py", "rb").read())
    add(f"{di}/METADATA", open(meta_file, "rb").read())
    add(f"{di}/WHEEL", b"Wheel-Version: 1.0\nGenerator: emud-build-harness\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
    add(f"{di}/top_level.txt", ("\n".join(tops) + "\n").encode())
    ep = os.path.join(info, "entry_points.txt")
    if os.path.exists(ep):
        add(f"{di}/entry_points.txt", open(ep, "rb").read())
    record.append(f"{di}/RECORD,,")
    z.writestr(f"{di}/RECORD", "\n".join(record) + "\n")
print(whl)
PY
}

# ---------------------------------------------------------------- QEMU
build_qemu() {
  local out=$1; local work=$1.work
  rm -rf "$work"; mkdir -p "$work/dl"
  log "qemu: fetching source $QEMU_VER from sid (apt-get source --download-only)"
  (cd "$work/dl" && papt_get source --download-only "qemu=$QEMU_VER" >"$work/source.log" 2>&1) ||
    { tail -5 "$work/source.log" >&2; unavailable "qemu=$QEMU_VER (source)"; }
  local orig; orig=$(ls "$work"/dl/qemu_*.orig.tar.* | head -1)
  log "qemu: unpacking $(basename "$orig")"
  tar -C "$work" -xf "$orig"
  local src; src=$(find "$work" -mindepth 1 -maxdepth 1 -type d -name 'qemu-*' | head -1)
  [[ -f $src/configure ]] || die "qemu: no configure in $orig"
  # meson >= 1.5 and pycotap as offline wheels for mkvenv (the +ds tarball has none).
  local mdeb pdeb
  mdeb=$(fetch_deb meson "$MESON_VER"); pdeb=$(fetch_deb python3-pycotap "$PYCOTAP_VER")
  mkdir -p "$work/py" "$src/python/wheels"
  dpkg-deb -x "$mdeb" "$work/py"; dpkg-deb -x "$pdeb" "$work/py"
  make_wheel "$work/py/usr/lib/python3/dist-packages" meson "${MESON_VER%%-*}" "$src/python/wheels" >/dev/null
  make_wheel "$work/py/usr/lib/python3/dist-packages" pycotap "${PYCOTAP_VER%%-*}" "$src/python/wheels" >/dev/null
  # pythondeps.toml's "installed" versions must match the wheels we provide.
  sed -i -E "s/^(meson = \{ accepted = \">=1\.5\.0\", installed = )\"[^\"]+\"/\1\"${MESON_VER%%-*}\"/; s/^(pycotap = \{ accepted = \"[^\"]+\", installed = )\"[^\"]+\"/\1\"${PYCOTAP_VER%%-*}\"/" \
    "$src/pythondeps.toml"
  # The +ds tarball carries no firmware blobs: do not unpack edk2 images.
  sed -i 's/unpack_edk2_blobs = bzip2.found()/unpack_edk2_blobs = false/' "$src/meson.build"
  sed -i "/^subdir('dtb')/d" "$src/pc-bios/meson.build"   # (no .dtb either; none is x86)
  log "qemu: configure (x86_64-softmmu, TCG+KVM, vfio-user-pci client)"
  mkdir -p "$src/build"
  (cd "$src/build" && ../configure --prefix="$out" --target-list=x86_64-softmmu \
      --without-default-features --enable-tcg --enable-kvm --disable-docs --disable-install-blobs \
      --disable-download --disable-werror --disable-debug-info --disable-gtk --disable-sdl \
      --disable-vnc --disable-opengl --disable-spice --disable-curses --disable-slirp \
      --disable-tools --disable-guest-agent --disable-rust \
      >"$work/configure.log" 2>&1) || { tail -30 "$work/configure.log" >&2; die "qemu: configure failed ($work/configure.log)"; }
  log "qemu: ninja qemu-system-x86_64 (-j$JOBS; ~3-6 min on 2 cores)"
  local t0=$SECONDS
  (cd "$src/build" && ninja -j"$JOBS" qemu-system-x86_64 >"$work/ninja.log" 2>&1) ||
    { tail -30 "$work/ninja.log" >&2; die "qemu: build failed ($work/ninja.log)"; }
  log "qemu: built in $((SECONDS - t0)) s"
  log "qemu: option ROMs linuxboot_dma.bin, kvmvapic.bin (pc-bios/optionrom)"
  [[ -f $src/build/pc-bios/optionrom/config.mak ]] ||
    die "qemu: configure found no compiler for pc-bios/optionrom (gcc-multilib missing?)"
  (cd "$src/build" && make -C pc-bios/optionrom linuxboot_dma.bin kvmvapic.bin >"$work/optionrom.log" 2>&1) ||
    { tail -20 "$work/optionrom.log" >&2; die "qemu: optionrom build failed"; }
  mkdir -p "$out/bin" "$out/share"
  install -m755 "$src/build/qemu-system-x86_64" "$out/bin/"
  install -m644 "$src/build/pc-bios/optionrom/linuxboot_dma.bin" "$src/build/pc-bios/optionrom/kvmvapic.bin" "$out/share/"
  "$out/bin/qemu-system-x86_64" -device help 2>/dev/null | grep -q '"vfio-user-pci"' ||
    die "qemu: the built binary has no vfio-user-pci device"
  echo "$QEMU_VER" >"$out/VERSION"
  rm -rf "$work"
}

# ---------------------------------------------------------------- firmware
build_firmware() {
  local out=$1 deb tmp
  deb=$(fetch_deb seabios "$SEABIOS_VER")
  tmp=$(mktemp -d); dpkg-deb -x "$deb" "$tmp"
  mkdir -p "$out"
  install -m644 "$tmp/usr/share/seabios/bios-256k.bin" "$out/bios-256k.bin"
  rm -rf "$tmp"
}

# ---------------------------------------------------------------- guest
build_guest() {
  local out=$1 kdeb bdeb edeb mdeb work=$1.work
  rm -rf "$work"; mkdir -p "$work/k" "$work/root" "$out"
  kdeb=$(fetch_deb "$KPKG" "$KVER"); bdeb=$(fetch_deb busybox-static "$BUSYBOX_VER")
  edeb=$(fetch_deb ethtool "$ETHTOOL_VER"); mdeb=$(fetch_deb libmnl0 "$LIBMNL_VER")
  log "guest: unpacking $KPKG $KVER"
  dpkg-deb -x "$kdeb" "$work/k"
  local moddir="$work/k/lib/modules/$KREL" iavf
  iavf=$(find "$moddir" -name 'iavf.ko*' | head -1)
  [[ -n $iavf ]] || die "guest: no iavf.ko in $KPKG"
  install -m644 "$work/k/boot/vmlinuz-$KREL" "$out/vmlinuz"
  # iavf and its module dependencies (recursively, via modinfo), decompressed;
  # /lib/modules/load-order lists them dependencies first.
  local r="$work/root"
  mkdir -p "$r"/{bin,sbin,dev,proc,sys,tmp,etc,lib/modules,lib64,lib/x86_64-linux-gnu,run}
  declare -A seen=()
  local order=()
  add_mod() {
    local name=$1 f dep
    [[ -n ${seen[$name]:-} ]] && return 0
    seen[$name]=1
    f=$(find "$moddir" -name "$name.ko*" | head -1)
    [[ -z $f ]] && f=$(find "$moddir" -name "${name//_/-}.ko*" | head -1)
    [[ -n $f ]] || die "guest: module $name not found in $KPKG"
    for dep in $(modinfo -F depends "$f" | tr ',' ' '); do add_mod "$dep"; done
    case $f in
      *.ko.xz) xz -dc "$f" >"$r/lib/modules/$name.ko" ;;
      *.ko.zst) zstd -qdc "$f" >"$r/lib/modules/$name.ko" ;;
      *.ko.gz) gzip -dc "$f" >"$r/lib/modules/$name.ko" ;;
      *) cp "$f" "$r/lib/modules/$name.ko" ;;
    esac
    order+=("$name")
  }
  add_mod iavf
  printf '%s\n' "${order[@]}" >"$r/lib/modules/load-order"
  log "guest: modules ${order[*]} ($(modinfo -F vermagic "$iavf"))"
  # Loaded by the phases that need them: 8021q (VLAN sub-interfaces) and
  # vfio-pci (DPDK, behind QEMU's emulated VT-d: this kernel has no
  # CONFIG_VFIO_NOIOMMU), each list dependencies first.
  local extra
  for extra in 8021q vfio-pci; do
    order=(); add_mod "$extra"
    # (vfio loads its IOMMU backend with request_module: no modprobe here)
    [[ $extra == vfio-pci ]] && add_mod vfio_iommu_type1
    printf '%s\n' "${order[@]}" >"$r/lib/modules/$extra.load-order"
    log "guest: $extra: modules ${order[*]}"
  done
  # busybox (static) with its applets as links
  dpkg-deb -x "$bdeb" "$work/bb"
  install -m755 "$work/bb/bin/busybox" "$r/bin/busybox"
  local a
  for a in $("$r/bin/busybox" --list); do [[ $a == busybox ]] || ln -sf busybox "$r/bin/$a"; done
  # ethtool (dynamic: bring its libraries along; libc is bookworm's, as on the host)
  dpkg-deb -x "$edeb" "$work/eth"; dpkg-deb -x "$mdeb" "$work/eth"
  install -m755 "$(find "$work/eth" -type f -name ethtool -path '*bin/*' | head -1)" "$r/sbin/ethtool"
  cp -L "$work"/eth/usr/lib/x86_64-linux-gnu/libmnl.so.0 "$r/lib/x86_64-linux-gnu/"
  local lib
  for lib in $(LD_LIBRARY_PATH="$work/eth/usr/lib/x86_64-linux-gnu" ldd "$r/sbin/ethtool" | awk '/=>/ {print $3} /ld-linux/ {print $1}'); do
    case $lib in */libmnl.so*) continue ;; esac
    cp -L "$lib" "$r/lib/x86_64-linux-gnu/"
  done
  cp -L /lib64/ld-linux-x86-64.so.2 "$r/lib64/"
  # the deterministic payload (also rebuilt by run.sh to compute expected hashes)
  python3 "$HERE/payload.py" "$PAYLOAD_MIB" >"$r/payload.bin"
  install -m755 "$HERE/guest/init" "$r/init"
  (cd "$r" && find . | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0 | gzip -6) >"$out/initramfs.cpio.gz"
  # The DPDK scenarios' initramfs: the same plus the host's (bookworm) DPDK
  # testpmd, the PMD plugins it needs (bus_pci, net_iavf, mempool_ring) and
  # their libraries (ldd), appended as a second cpio archive (the kernel
  # unpacks concatenated archives in order).
  local d="$work/dpdk" f plugdir
  plugdir=$(dirname "$(readlink -f "$DPDK_PLUGIN_DIR/librte_net_iavf.so")")
  mkdir -p "$d/usr/bin" "$d/lib/x86_64-linux-gnu" "$d$DPDK_PLUGIN_DIR"
  install -m755 /usr/bin/dpdk-testpmd "$d/usr/bin/dpdk-testpmd"
  # coreutils' stdbuf: testpmd's stdout is a pipe to the guest script, which
  # reads it while testpmd runs (line-buffered, not at exit)
  mkdir -p "$d/usr/libexec/coreutils"
  install -m755 /usr/bin/stdbuf "$d/usr/bin/stdbuf"
  install -m755 /usr/libexec/coreutils/libstdbuf.so "$d/usr/libexec/coreutils/libstdbuf.so"
  # One file per plugin, reached by both names as on the host (EAL loads the
  # plugin directory; testpmd links bus_pci too: two copies would register
  # their tailqs twice).
  local real soname
  for f in librte_bus_pci.so librte_net_iavf.so librte_mempool_ring.so; do
    real=$(readlink -f "$DPDK_PLUGIN_DIR/$f")
    soname=$(objdump -p "$real" | awk '$1 == "SONAME" {print $2}')
    [[ -n $soname ]] || die "guest: no SONAME in $real"
    cp "$real" "$d$DPDK_PLUGIN_DIR/"
    ln -sf "$(basename "$real")" "$d$DPDK_PLUGIN_DIR/$f"
    ln -sf "$(basename "$real")" "$d$DPDK_PLUGIN_DIR/$soname"
    ln -sf "$DPDK_PLUGIN_DIR/$(basename "$real")" "$d/lib/x86_64-linux-gnu/$soname"
  done
  for lib in $( { ldd /usr/bin/dpdk-testpmd; ldd /usr/bin/stdbuf; for f in "$d$DPDK_PLUGIN_DIR"/*.so; do ldd "$f"; done; } |
      awk '/=>/ && $3 ~ /^\// {print $3}' | sort -u); do
    [[ -e $r/lib/x86_64-linux-gnu/$(basename "$lib") || -L $d/lib/x86_64-linux-gnu/$(basename "$lib") ]] ||
      cp -L "$lib" "$d/lib/x86_64-linux-gnu/"
  done
  # (glibc dlopens libgcc_s for pthread_cancel, which testpmd's exit uses)
  cp -L /lib/x86_64-linux-gnu/libgcc_s.so.1 "$d/lib/x86_64-linux-gnu/"
  (cd "$d" && find . | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0 | gzip -6) >"$work/dpdk.cpio.gz"
  cat "$out/initramfs.cpio.gz" "$work/dpdk.cpio.gz" >"$out/initramfs-dpdk.cpio.gz"
  log "guest: DPDK initramfs $(du -h "$out/initramfs-dpdk.cpio.gz" | cut -f1) (dpdk-testpmd $DPDK_VER, plugins from $plugdir)"
  echo "$KPKG $KVER" >"$out/VERSION"
  rm -rf "$work"
}

# ---------------------------------------------------------------- assemble
# component NAME KEY FUNC: builds into $CACHE/NAME-KEY once.
component() {
  local name=$1 k=$2 fn=$3 dir="$CACHE/$1-$2"
  if [[ -e $dir/.complete ]]; then
    log "$name: cached ($dir)"
  else
    log "$name: building into $dir"
    rm -rf "$dir"
    "$fn" "$dir" >&2
    touch "$dir/.complete"
  fi
  echo "$dir"
}

QEMU_KEY=$( { declare -f build_qemu make_wheel; echo "$QEMU_VER $MESON_VER $PYCOTAP_VER"; gcc --version | head -1; } | key)
FW_KEY=$( { declare -f build_firmware; echo "$SEABIOS_VER"; } | key)
GUEST_KEY=$( { declare -f build_guest; echo "$KPKG $KVER $BUSYBOX_VER $ETHTOOL_VER $LIBMNL_VER $PAYLOAD_MIB";
  cat "$HERE/guest/init" "$HERE/payload.py"; dpkg-query -W -f='${Version}' libc6; echo "dpdk $DPDK_VER"; } | key)

need_build=0
for c in "qemu-$QEMU_KEY" "firmware-$FW_KEY" "guest-$GUEST_KEY"; do
  [[ -e $CACHE/$c/.complete ]] || need_build=1
done
((need_build)) && ensure_host_deps

QEMU_DIR=$(component qemu "$QEMU_KEY" build_qemu)
FW_DIR=$(component firmware "$FW_KEY" build_firmware)
GUEST_DIR=$(component guest "$GUEST_KEY" build_guest)

# -L directory: SeaBIOS and the option ROM side by side.
FWDIR_ALL="$CACHE/fw-$( (echo "$QEMU_KEY $FW_KEY") | key)"
if [[ ! -e $FWDIR_ALL/.complete ]]; then
  rm -rf "$FWDIR_ALL"; mkdir -p "$FWDIR_ALL"
  cp "$FW_DIR/bios-256k.bin" "$QEMU_DIR"/share/*.bin "$FWDIR_ALL/"
  touch "$FWDIR_ALL/.complete"
fi

HARNESS_KEY=$(echo "$QEMU_KEY $FW_KEY $GUEST_KEY" | key)
ENVF="$CACHE/harness-$HARNESS_KEY.env"
cat >"$ENVF" <<EOF
# generated by tests/vmm/build_harness.sh
VMM_HARNESS_KEY=$HARNESS_KEY
VMM_QEMU=$QEMU_DIR/bin/qemu-system-x86_64
VMM_QEMU_VERSION='$QEMU_VER'
VMM_FW_DIR=$FWDIR_ALL
VMM_BIOS=$FWDIR_ALL/bios-256k.bin
VMM_SEABIOS_VERSION='$SEABIOS_VER'
VMM_KERNEL=$GUEST_DIR/vmlinuz
VMM_INITRD=$GUEST_DIR/initramfs.cpio.gz
VMM_INITRD_DPDK=$GUEST_DIR/initramfs-dpdk.cpio.gz
VMM_DPDK_VERSION='$DPDK_VER'
VMM_GUEST_KERNEL='$KPKG $KVER'
VMM_PAYLOAD_MIB=$PAYLOAD_MIB
EOF
cp "$ENVF" "$CACHE/harness.env"
# Components and env files of other input sets are stale: drop them.
for d in "$CACHE"/qemu-* "$CACHE"/firmware-* "$CACHE"/guest-* "$CACHE"/fw-* "$CACHE"/harness-*.env; do
  case $d in
    "$QEMU_DIR" | "$FW_DIR" | "$GUEST_DIR" | "$FWDIR_ALL" | "$ENVF") ;;
    *) [[ -e $d ]] && { log "removing stale $d"; rm -rf "$d"; } ;;
  esac
done
log "ready: $ENVF"
echo "$ENVF"
