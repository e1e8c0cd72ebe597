"""Dumps a stopped process's resident memory into a memory image.

    dump_process.py PID IMAGE MAPS

Walks /proc/PID/maps in address order; for every readable mapping, reads
/proc/PID/pagemap and copies the pages present in RAM (bit 63) from
/proc/PID/mem, concatenated, page by page. Pages not in RAM (never touched,
or file pages never read) are left out: the image is what the process
holds in memory, not what it could fault in. A present page that cannot be
read is written as zeros and counted. MAPS gets one line per mapping: image
offset, address range, permissions, pages written, mapping.

Needs root (another process's pagemap and mem). The caller stops the
process (SIGSTOP) first so the image is one moment's memory.
"""

import struct
import sys

PAGE = 4096
PRESENT = 1 << 63
SKIP = {"[vvar]", "[vvar_vclock]", "[vsyscall]"}


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    pid, image_path, maps_path = sys.argv[1:]
    with open(f"/proc/{pid}/maps") as f:
        regions = []
        for line in f:
            parts = line.split(None, 5)
            path = parts[5].strip() if len(parts) > 5 else "-"
            if parts[1][0] != "r" or path in SKIP:
                continue
            start, end = (int(x, 16) for x in parts[0].split("-"))
            regions.append((start, end, parts[1], path))

    unreadable = 0
    offset = 0
    with open(f"/proc/{pid}/pagemap", "rb", buffering=0) as pagemap, \
            open(f"/proc/{pid}/mem", "rb", buffering=0) as mem, \
            open(image_path, "wb") as out, open(maps_path, "w") as maps:
        maps.write("# image_offset start end perms pages mapping\n")
        for start, end, perms, path in regions:
            n = (end - start) // PAGE
            pagemap.seek(start // PAGE * 8)
            raw = pagemap.read(n * 8)
            entries = struct.unpack(f"<{len(raw) // 8}Q", raw)
            written = 0
            for i, e in enumerate(entries):
                if not e & PRESENT:
                    continue
                mem.seek(start + i * PAGE)
                try:
                    data = mem.read(PAGE)
                except OSError:
                    data = b""
                if len(data) != PAGE:
                    unreadable += 1
                    data = bytes(PAGE)
                out.write(data)
                written += 1
            maps.write(f"{offset:x} {start:x} {end:x} {perms} {written} {path}\n")
            offset += written * PAGE
    print(f"dump_process.py: {offset // PAGE} pages from {len(regions)} mappings"
          f", {unreadable} unreadable", file=sys.stderr)


if __name__ == "__main__":
    main()
