#!/usr/bin/env bash
# Builds wanmig's real-memory corpus: memory images of real Linux guests
# (QEMU TCG, Debian's cloud kernel, a busybox initramfs, real files and a
# real CPython heap), saved with HMP `pmemsave`, and memory dumps of real
# running processes (CPython, OpenJDK) read from /proc/PID/mem. See
# benches/corpus/README.md for what each image is.
#
#   benches/corpus/build.sh [--force] [NAME...]   build (default: every image)
#   benches/corpus/build.sh --list                 names and what they are
#
# Images go to $WANMIG_CORPUS_DIR (default $XDG_CACHE_HOME/wanmig/corpus,
# i.e. ~/.cache/wanmig/corpus), never into the repository: NAME.img (the
# memory), NAME.json (what it is, how it was built, its stamp), and
# NAME.console.log (guests) or NAME.maps (processes: image offset, address
# range, permissions, pages in the image and mapping of each region).
#
# Idempotent: an image whose NAME.json carries the current stamp is kept.
# The stamp hashes the image's recipe: its parameters, the files and the
# functions of this script that make that kind of image (guests: init.sh,
# heap.py, the disk's file sources; processes: heap.py, Heap.java,
# dump_process.py), so changing any of them rebuilds it. Downloaded
# packages stay in $WANMIG_CORPUS_DIR/downloads; the kernel is the one
# Debian's linux-image-cloud-amd64 depends on at the first build (or
# $WANMIG_CORPUS_KERNEL, a package name), and stays until that file is
# deleted. Needs root (dumping other processes' memory), apt-get, dpkg,
# qemu-system-x86_64, mkfs.ext4, Debian's /usr/bin/python3, and java/javac
# for proc-java. Concurrent runs wait for each other (a lock file).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
CORPUS=${WANMIG_CORPUS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/wanmig/corpus}
READY=WANMIG-CORPUS-READY
PYTHON=/usr/bin/python3
# Deadlines (s) for a workload to reach its ready marker; TCG is slow and
# the machine may be shared.
GUEST_DEADLINE=${WANMIG_CORPUS_GUEST_DEADLINE:-3600}
PROCESS_DEADLINE=${WANMIG_CORPUS_PROCESS_DEADLINE:-1200}

# name|kind|parameters|description. Parameters are part of the stamp.
IMAGES=(
  "linux-pagecache-2g|guest|mem_mib=2048 workload=pagecache list=full|2 GiB Linux guest (Debian cloud kernel, busybox init) after reading ~500 MiB of real files from a virtio disk: docs, headers, man pages, Python sources, executables, shared libraries"
  "linux-pyheap-2g|guest|mem_mib=2048 workload=pyheap heap_mib=512|2 GiB Linux guest running CPython 3.11 (stdlib from the disk) that has built a 512 MiB web-shop heap (objects, dicts, JSON strings, an inverted index) from real text"
  "linux-pagecache-256m|guest|mem_mib=256 workload=pagecache list=small|256 MiB Linux guest after reading ~100 MiB of real files (the test-sized variant of linux-pagecache-2g)"
  "proc-python|process|runtime=python heap_mib=256|the memory of a CPython 3.11 process holding a 256 MiB web-shop heap (heap.py): its pages resident in RAM"
  "proc-java|process|runtime=java heap_mib=256 xmx_mib=1024|the memory of an OpenJDK 17 process (G1, -Xmx1g) holding a 256 MiB web-shop heap (Heap.java): its pages resident in RAM"
)

# Files the page-cache workload reads, per source directory: the cap in
# MiB for the full list (the small list takes a sixth of each). Files are
# taken in sorted path order until the cap.
DATA_SOURCES=(
  "/usr/share/doc|100|"
  "/usr/include|100|"
  "/usr/share/man|40|"
  "/usr/lib/python3.11|60|"
  "/usr/bin|120|"
  "/usr/lib/x86_64-linux-gnu|180|*.so*"
)
# The modules virtio-blk needs (dependencies are added from the modules'
# own depends= fields); ext4 is built into the cloud kernel.
MODULES=(virtio_pci virtio_blk)

log() { printf 'corpus: %s\n' "$*" >&2; }
die() { printf 'corpus: error: %s\n' "$*" >&2; exit 1; }

field() { # field NAME INDEX: a field of NAME's IMAGES entry
  local e
  for e in "${IMAGES[@]}"; do
    if [ "${e%%|*}" = "$1" ]; then
      echo "$e" | cut -d'|' -f"$2"
      return 0
    fi
  done
  return 1
}

param() { # param NAME KEY: a value from NAME's parameters
  local kv
  for kv in $(field "$1" 3); do
    if [ "${kv%%=*}" = "$2" ]; then
      echo "${kv#*=}"
      return 0
    fi
  done
  die "image $1 has no parameter $2"
}

stamp_of() { # stamp_of NAME
  {
    field "$1" 3
    case "$(field "$1" 2)" in
      guest)
        cat "$HERE/init.sh" "$HERE/heap.py"
        echo "${DATA_SOURCES[*]}" "${MODULES[*]}"
        declare -f build_guest guest_parts make_initramfs module_order make_disk pick_files \
          copy_with_libs wait_ready
        ;;
      process)
        cat "$HERE/heap.py" "$HERE/Heap.java" "$HERE/dump_process.py"
        declare -f build_process wait_ready
        ;;
    esac
  } | sha256sum | cut -c1-16
}

is_built() { # is_built NAME
  [ -f "$CORPUS/$1.img" ] && [ -f "$CORPUS/$1.json" ] \
    && grep -q "\"stamp\": \"$(stamp_of "$1")\"" "$CORPUS/$1.json"
}

need() { # need COMMAND WHAT-FOR
  command -v "$1" >/dev/null 2>&1 || die "$1 not found (needed for $2)"
}

# --- Debian packages ---------------------------------------------------------

download() { # download PACKAGE: the .deb's path (cached)
  local pkg=$1 deb
  mkdir -p "$CORPUS/downloads"
  deb=$(find "$CORPUS/downloads" -name "${pkg}_*.deb" | head -n1)
  if [ -z "$deb" ]; then
    log "downloading $pkg"
    (cd "$CORPUS/downloads" && apt-get -o APT::Sandbox::User=root download "$pkg" >&2) \
      || die "apt-get download $pkg failed (run apt-get update?)"
    deb=$(find "$CORPUS/downloads" -name "${pkg}_*.deb" | head -n1)
    [ -n "$deb" ] || die "apt-get download $pkg left no ${pkg}_*.deb"
  fi
  echo "$deb"
}

kernel_package() {
  local deb
  if [ -n "${WANMIG_CORPUS_KERNEL:-}" ]; then
    echo "$WANMIG_CORPUS_KERNEL"
    return
  fi
  deb=$(find "$CORPUS/downloads" -name 'linux-image-*-cloud-amd64_*.deb' | head -n1)
  if [ -n "$deb" ]; then
    basename "$deb" | cut -d_ -f1
    return
  fi
  apt-cache depends linux-image-cloud-amd64 2>/dev/null \
    | awk '/Depends: linux-image-[0-9]/ { print $2; exit }' | grep . \
    || die "cannot resolve linux-image-cloud-amd64 (run apt-get update?)"
}

unpack() { # unpack DEB: a directory holding the package's files (cached)
  local deb=$1 dir
  dir="$CORPUS/work/pkg-$(basename "$deb" .deb)"
  if [ ! -d "$dir" ]; then
    dpkg -x "$deb" "$dir.tmp" && mv "$dir.tmp" "$dir"
  fi
  echo "$dir"
}

# --- guest parts -------------------------------------------------------------

KERNEL_DIR='' KERNEL_PKG='' KERNEL_VERSION='' BUSYBOX=
guest_parts() {
  [ -n "$KERNEL_DIR" ] && return
  need apt-get "downloading the guest kernel and busybox"
  need dpkg "unpacking them"
  KERNEL_PKG=$(kernel_package)
  local deb
  deb=$(download "$KERNEL_PKG")
  KERNEL_VERSION=$(dpkg-deb -f "$deb" Version)
  KERNEL_DIR=$(unpack "$deb")
  BUSYBOX=$(unpack "$(download busybox-static)")/bin/busybox
  [ -x "$BUSYBOX" ] || die "busybox-static has no bin/busybox"
}

# Prints the module names MODULES need, dependencies first.
module_order() {
  local moddir=$1
  declare -A seen=()
  visit() {
    local m=$1 f dep
    [ -n "${seen[$m]:-}" ] && return
    seen[$m]=1
    f=$(find "$moddir" -name "$m.ko" | head -n1)
    [ -n "$f" ] || die "module $m not in $moddir"
    for dep in $(strings -a "$f" | sed -n 's/^depends=//p' | tr ',' ' '); do
      visit "$dep"
    done
    echo "$m"
  }
  for m in "${MODULES[@]}"; do visit "$m"; done
}

INITRAMFS=
make_initramfs() {
  [ -n "$INITRAMFS" ] && return
  guest_parts
  # Keyed by what goes into it (not the whole recipe: editing the rest of
  # this script does not remake it).
  local key out stage m moddir
  key=$( (cat "$HERE/init.sh"; echo "${MODULES[*]}" "$KERNEL_DIR" "$BUSYBOX"; declare -f make_initramfs module_order) \
    | sha256sum | cut -c1-16)
  out="$CORPUS/work/initramfs-$key.cpio.gz"
  if [ ! -f "$out" ]; then
    log "making the initramfs"
    rm -f "$CORPUS/work/"initramfs-*
    stage="$CORPUS/work/initramfs.d"
    rm -rf "$stage"
    mkdir -p "$stage/bin" "$stage/modules"
    cp "$BUSYBOX" "$stage/bin/busybox"
    ln -s busybox "$stage/bin/sh"
    cp "$HERE/init.sh" "$stage/init"
    chmod 755 "$stage/init"
    moddir=$(ls -d "$KERNEL_DIR"/lib/modules/*/)
    module_order "$moddir" > "$stage/modules/order"
    while read -r m; do
      cp "$(find "$moddir" -name "$m.ko" | head -n1)" "$stage/modules/"
    done < "$stage/modules/order"
    (cd "$stage" && find . | LC_ALL=C sort | "$BUSYBOX" cpio -o -H newc -R 0:0 2>/dev/null) \
      | gzip -6 > "$out.tmp"
    mv "$out.tmp" "$out"
    rm -rf "$stage"
  fi
  INITRAMFS=$out
}

# Prints (NUL-separated) the files of SOURCE-DIR up to CAP MiB, sorted.
pick_files() { # pick_files DIR CAP_MIB NAME-PATTERN
  local dir=$1 cap=$2 pattern=$3
  local args=(-type f)
  [ -n "$pattern" ] && args+=(-name "$pattern")
  find "$dir" "${args[@]}" -printf '%s\t%p\n' | LC_ALL=C sort -t$'\t' -k2 \
    | awk -F'\t' -v cap=$((cap << 20)) \
        '!full && tot + $1 <= cap { tot += $1; printf "%s%c", $2, 0; next } { full = 1 }'
}

copy_with_libs() { # copy_with_libs STAGE ELF...: the ELFs' shared libraries
  local stage=$1 lib dir
  shift
  for lib in $(ldd "$@" 2>/dev/null | awk '/=> \// { print $3 } /^\t\/lib/ { print $1 }' | sort -u); do
    dir=$(readlink -f "$(dirname "$lib")")
    mkdir -p "$stage$dir"
    [ -e "$stage$dir/$(basename "$lib")" ] || cp -L "$lib" "$stage$dir/"
  done
}

DISK='' DISK_NONCE='' DISK_FILES='' DISK_FILE_BYTES=
make_disk() {
  [ -n "$DISK" ] && return
  need mkfs.ext4 "the guests' disk"
  [ -x "$PYTHON" ] || die "$PYTHON not found (Debian's python3: the pyheap guest's runtime)"
  # Keyed by what goes into it, as the initramfs.
  local key base stage src dir cap pattern
  key=$( (cat "$HERE/heap.py"; echo "${DATA_SOURCES[*]}" "$(readlink -f "$PYTHON")"; declare -f make_disk pick_files copy_with_libs) \
    | sha256sum | cut -c1-16)
  base="$CORPUS/work/disk-$key"
  if [ ! -f "$base.img" ]; then
    log "making the guests' disk (copies of the host's files)"
    rm -rf "$CORPUS/work/"disk-*
    stage="$base.d"
    rm -rf "$stage"
    mkdir -p "$stage"/{data,lists,work,proc,dev,tmp,usr/bin,usr/lib,usr/lib64}
    ln -s usr/lib "$stage/lib"
    ln -s usr/lib64 "$stage/lib64"
    # The page-cache workload's files, and the two lists that name them.
    : > "$stage/lists/full"
    : > "$stage/lists/small"
    : > "$CORPUS/work/host-files"
    for src in "${DATA_SOURCES[@]}"; do
      IFS='|' read -r dir cap pattern <<< "$src"
      [ -d "$dir" ] || continue
      pick_files "$dir" "$cap" "$pattern" >> "$CORPUS/work/host-files"
      pick_files "$dir" $((cap / 6)) "$pattern" \
        | tr '\0' '\n' | sed 's|^/|data/|' | tr '\n' '\0' >> "$stage/lists/small"
    done
    tr '\0' '\n' < "$CORPUS/work/host-files" | sed 's|^/|data/|' | tr '\n' '\0' > "$stage/lists/full"
    # One tar keeps hard links (Mesa's drivers are one file under a dozen
    # names): the guest's page cache holds such a file once, as the host's.
    tr '\0' '\n' < "$CORPUS/work/host-files" | sed 's|^/||' | tr '\n' '\0' \
      | tar -C / --null -T - -cf - | tar -C "$stage/data" -xf -
    rm "$CORPUS/work/host-files"
    # A nonce per disk: the page cache of a guest that read its lists holds
    # it; heap.py keeps it reversed in its heap.
    echo "corpus-nonce-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')" > "$stage/work/nonce"
    printf '%s\0' work/nonce >> "$stage/lists/full"
    printf '%s\0' work/nonce >> "$stage/lists/small"
    # CPython with its standard library and shared libraries.
    local py
    py=$(readlink -f "$PYTHON")
    cp "$py" "$stage/usr/bin/"
    ln -s "$(basename "$py")" "$stage/usr/bin/python3"
    cp -a "/usr/lib/$(basename "$py")" "$stage/usr/lib/"
    copy_with_libs "$stage" "$py" "/usr/lib/$(basename "$py")"/lib-dynload/*.so
    cp "$HERE/heap.py" "$stage/work/"
    local kib files bytes
    kib=$(du -sk "$stage" | cut -f1)
    files=$(tr -cd '\0' < "$stage/lists/full" | wc -c)
    bytes=$(cd "$stage" && xargs -0 stat -c %s < lists/full | awk '{ t += $1 } END { print t }')
    mkfs.ext4 -q -F -L wanmig-corpus -E root_owner=0:0 -d "$stage" "$base.img.tmp" $((kib * 5 / 4 / 1024 + 64))M >&2 \
      || die "mkfs.ext4 failed"
    printf 'DISK_NONCE=%s\nDISK_FILES=%s\nDISK_FILE_BYTES=%s\n' \
      "$(cat "$stage/work/nonce")" "$files" "$bytes" > "$base.env"
    rm -rf "$stage"
    mv "$base.img.tmp" "$base.img"
  fi
  # shellcheck disable=SC1090
  . "$base.env"
  DISK="$base.img"
}

# --- building one image ------------------------------------------------------

QEMU_PID=
WORKLOAD_PID=
cleanup() {
  if [ -n "$QEMU_PID" ]; then kill "$QEMU_PID" 2>/dev/null || true; fi
  if [ -n "$WORKLOAD_PID" ]; then kill -KILL "$WORKLOAD_PID" 2>/dev/null || true; fi
}
trap cleanup EXIT

# Waits until FILE holds the ready marker; fails on FAILED, on PID's exit
# or at the deadline.
wait_ready() { # wait_ready FILE PID DEADLINE-SECONDS WHAT
  local file=$1 pid=$2 deadline=$(( $(date +%s) + $3 )) what=$4
  while ! grep -q "$READY" "$file" 2>/dev/null; do
    if grep -q "WANMIG-CORPUS-FAILED" "$file" 2>/dev/null; then
      tail -n 30 "$file" >&2
      die "$what failed"
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 30 "$file" >&2 || true
      die "$what exited before it was ready"
    fi
    if [ "$(date +%s)" -ge "$deadline" ]; then
      tail -n 30 "$file" >&2 || true
      die "$what not ready after $3 s"
    fi
    sleep 1
  done
}

write_meta() { # write_meta NAME KIND SECONDS EXTRA-JSON-FIELDS
  local name=$1 kind=$2 secs=$3 extra=$4
  cat > "$CORPUS/$name.json.tmp" <<EOF
{
  "name": "$name",
  "kind": "$kind",
  "description": "$(field "$name" 4)",
  "parameters": "$(field "$name" 3)",
  "bytes": $(stat -c %s "$CORPUS/$name.img"),
  "stamp": "$(stamp_of "$name")",
  "built_at": "$(date -u +%Y-%m-%dT%H:%M:%SZ)",
  "build_seconds": $secs,
  $extra
}
EOF
  mv "$CORPUS/$name.json.tmp" "$CORPUS/$name.json"
}

build_guest() { # build_guest NAME
  local name=$1 mem workload append wd t0 bytes
  need qemu-system-x86_64 "the guest images"
  make_initramfs
  make_disk
  mem=$(param "$name" mem_mib)
  workload=$(param "$name" workload)
  # no_timer_check: under TCG on a busy host the kernel's IO-APIC timer
  # check can miss its ticks and panic at boot.
  append="console=ttyS0 panic=-1 no_timer_check wanmig.workload=$workload"
  case "$workload" in
    pagecache) append+=" wanmig.list=$(param "$name" list)" ;;
    pyheap) append+=" wanmig.heap_mib=$(param "$name" heap_mib)" ;;
  esac
  bytes=$((mem << 20))
  wd="$CORPUS/work/run-$name"
  rm -rf "$wd"
  mkdir -p "$wd"
  mkfifo "$wd/monitor.in"
  log "$name: booting a $mem MiB guest ($workload) under TCG"
  t0=$(date +%s)
  # HMP on stdin/stdout (a fifo): pmemsave's path is relative to QEMU's
  # working directory, and a later `quit` runs only after it finished.
  (cd "$wd" && exec qemu-system-x86_64 -accel tcg -machine pc -m "$mem" -smp 1 \
      -nodefaults -display none -no-reboot \
      -kernel "$(ls "$KERNEL_DIR"/boot/vmlinuz-*)" -initrd "$INITRAMFS" -append "$append" \
      -drive "file=$DISK,if=virtio,format=raw,readonly=on" \
      -serial file:console.log -monitor stdio \
      < monitor.in > monitor.log 2> qemu.err) &
  QEMU_PID=$!
  exec 3> "$wd/monitor.in"
  wait_ready "$wd/console.log" "$QEMU_PID" "$GUEST_DEADLINE" "$name's guest"
  log "$name: ready after $(( $(date +%s) - t0 )) s; saving $mem MiB of guest memory"
  {
    echo stop
    echo "pmemsave 0 $bytes ram.img"
    echo quit
  } >&3
  exec 3>&-
  wait "$QEMU_PID" || true
  QEMU_PID=
  [ "$(stat -c %s "$wd/ram.img" 2>/dev/null || echo 0)" = "$bytes" ] \
    || { cat "$wd/qemu.err" >&2; die "$name: pmemsave did not write $bytes bytes"; }
  mv "$wd/ram.img" "$CORPUS/$name.img"
  cp "$wd/console.log" "$CORPUS/$name.console.log"
  local extra
  extra=$(printf '"ram_mib": %s,\n  "workload": "%s",\n  "kernel": "%s %s",\n  "qemu": "%s",\n  "disk_files": %s,\n  "disk_file_bytes": %s,\n  "nonce": "%s",\n  "heap_token": "heap-token-%s"' \
    "$mem" "$workload" "$KERNEL_PKG" "$KERNEL_VERSION" \
    "$(qemu-system-x86_64 --version | head -n1)" "$DISK_FILES" "$DISK_FILE_BYTES" \
    "$DISK_NONCE" "$(echo "$DISK_NONCE" | rev)")
  write_meta "$name" guest $(( $(date +%s) - t0 )) "$extra"
  rm -rf "$wd"
}

build_process() { # build_process NAME
  local name=$1 runtime heap wd t0 version
  [ "$(id -u)" = 0 ] || die "$name: reading /proc/PID/mem of another process needs root"
  runtime=$(param "$name" runtime)
  heap=$(param "$name" heap_mib)
  wd="$CORPUS/work/run-$name"
  rm -rf "$wd"
  mkdir -p "$wd"
  echo "corpus-nonce-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')" > "$wd/nonce"
  local text=(--text /usr/lib/python3.11 --text /usr/share/doc)
  t0=$(date +%s)
  case "$runtime" in
    python)
      [ -x "$PYTHON" ] || die "$PYTHON not found (Debian's python3)"
      version=$("$PYTHON" --version 2>&1)
      log "$name: running heap.py ($version) to $heap MiB"
      PYTHONHASHSEED=0 "$PYTHON" -B "$HERE/heap.py" "${text[@]}" --target-mib "$heap" \
        --nonce-file "$wd/nonce" > "$wd/out.log" 2>&1 &
      ;;
    java)
      need javac "proc-java (Debian's openjdk-17-jdk-headless)"
      need java "proc-java"
      version=$(java -version 2>&1 | head -n1 | tr -d '"')
      log "$name: running Heap.java ($version) to $heap MiB"
      javac -d "$wd/classes" "$HERE/Heap.java"
      java -Xmx"$(param "$name" xmx_mib)"m -XX:+UseG1GC -cp "$wd/classes" Heap "${text[@]}" \
        --target-mib "$heap" --nonce-file "$wd/nonce" > "$wd/out.log" 2>&1 &
      ;;
    *) die "$name: unknown runtime $runtime" ;;
  esac
  WORKLOAD_PID=$!
  wait_ready "$wd/out.log" "$WORKLOAD_PID" "$PROCESS_DEADLINE" "$name's program"
  log "$name: ready after $(( $(date +%s) - t0 )) s; dumping pid $WORKLOAD_PID"
  kill -STOP "$WORKLOAD_PID"
  "$PYTHON" "$HERE/dump_process.py" "$WORKLOAD_PID" "$wd/mem.img" "$wd/maps"
  kill -KILL "$WORKLOAD_PID"
  wait "$WORKLOAD_PID" 2>/dev/null || true
  WORKLOAD_PID=
  mv "$wd/mem.img" "$CORPUS/$name.img"
  mv "$wd/maps" "$CORPUS/$name.maps"
  local nonce extra
  nonce=$(cat "$wd/nonce")
  extra=$(printf '"runtime": "%s",\n  "regions": %s,\n  "nonce": "%s",\n  "heap_token": "heap-token-%s"' \
    "$version" "$(grep -vc '^#' "$CORPUS/$name.maps")" "$nonce" "$(echo "$nonce" | rev)")
  write_meta "$name" process $(( $(date +%s) - t0 )) "$extra"
  rm -rf "$wd"
}

# --- main --------------------------------------------------------------------

force=0
names=()
for arg in "$@"; do
  case "$arg" in
    --list)
      for e in "${IMAGES[@]}"; do
        printf '%-22s %-8s %s\n' "${e%%|*}" "$(echo "$e" | cut -d'|' -f2)" "$(echo "$e" | cut -d'|' -f4)"
      done
      exit 0
      ;;
    --force) force=1 ;;
    -h | --help) sed -n '2,27p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) die "unknown option $arg (see --help)" ;;
    *) field "$arg" 1 >/dev/null || die "unknown image $arg (see --list)"; names+=("$arg") ;;
  esac
done
if [ ${#names[@]} -eq 0 ]; then
  for e in "${IMAGES[@]}"; do names+=("${e%%|*}"); done
fi

mkdir -p "$CORPUS/work" "$CORPUS/downloads"
exec 9> "$CORPUS/.lock"
flock 9
for name in "${names[@]}"; do
  if [ "$force" = 0 ] && is_built "$name"; then
    log "$name: up to date"
    continue
  fi
  case "$(field "$name" 2)" in
    guest) build_guest "$name" ;;
    process) build_process "$name" ;;
  esac
  log "$name: built $CORPUS/$name.img"
done
