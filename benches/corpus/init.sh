#!/bin/sh
# PID 1 of the corpus guests (busybox sh, in the initramfs build.sh makes).
#
# Loads the virtio block driver, mounts the corpus disk read-only at /mnt,
# runs the workload named on the kernel command line, prints the ready
# marker on the console and idles until the host saves memory and quits.
#
# Kernel command line:
#   wanmig.workload=pagecache  read every file listed in /mnt/lists/$list
#                              (NUL-separated paths): the page cache fills
#                              with text, shared libraries and executables
#   wanmig.workload=pyheap     run /mnt/work/heap.py with the disk's
#                              CPython (chroot /mnt) until it holds
#                              wanmig.heap_mib MiB, then print the marker
#   wanmig.list=NAME           file list for pagecache (full, small)
#   wanmig.heap_mib=N          heap size for pyheap

PATH=/bin
export PATH

fail() {
    echo "WANMIG-CORPUS-FAILED: $*"
    # Keep PID 1 alive: the host sees the marker and stops the guest.
    while :; do sleep 3600; done
}

/bin/busybox --install -s /bin
mkdir -p /proc /sys /dev /mnt
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

while read -r m; do
    insmod "/modules/$m.ko" || fail "insmod $m"
done < /modules/order

n=0
while [ ! -b /dev/vda ]; do
    n=$((n + 1))
    [ "$n" -gt 300 ] && fail "no /dev/vda after 30 s"
    sleep 0.1
done
mount -t ext4 -o ro,noload /dev/vda /mnt || fail "mount /dev/vda"

workload=
list=full
heap_mib=256
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        wanmig.workload=*) workload="${arg#*=}" ;;
        wanmig.list=*) list="${arg#*=}" ;;
        wanmig.heap_mib=*) heap_mib="${arg#*=}" ;;
    esac
done

case "$workload" in
    pagecache)
        [ -f "/mnt/lists/$list" ] || fail "no file list $list"
        cd /mnt || fail "cd /mnt"
        xargs -0 cat < "/mnt/lists/$list" > /dev/null || fail "reading the files of $list"
        cd /
        echo "pagecache: read $(tr -cd '\000' < "/mnt/lists/$list" | wc -c) files of list $list"
        echo "WANMIG-CORPUS-READY"
        ;;
    pyheap)
        mount -t proc proc /mnt/proc || fail "mount /mnt/proc"
        mount -t devtmpfs devtmpfs /mnt/dev || fail "mount /mnt/dev"
        # heap.py prints the ready marker itself once it holds heap_mib.
        PYTHONHASHSEED=0 LD_LIBRARY_PATH=/usr/lib/x86_64-linux-gnu chroot /mnt /usr/bin/python3 -B /work/heap.py \
            --text /usr/lib/python3.11 --text /data/usr/share/doc \
            --target-mib "$heap_mib" --nonce-file /work/nonce \
            || fail "heap.py exited"
        ;;
    *)
        fail "unknown workload '$workload'"
        ;;
esac

while :; do sleep 3600; done
