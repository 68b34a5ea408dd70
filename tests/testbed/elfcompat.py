#!/usr/bin/python3
"""Inspect and adjust glibc symbol-version needs of ELF files (testbed helper).

Debian's Apptainer package is built against glibc 2.38, Debian 12 ships 2.36.
The only 2.38 symbols its binaries use are ``__isoc23_strtol`` and
``__isoc23_strtoul`` (C23 variants of strtol/strtoul).  The testbed provides
them from a small shim library and then needs two things done to the binaries:

* ``scan DIR``: list, for every ELF file under DIR, the imported symbols that
  need a glibc newer than the running one, and fail when any of them is not in
  the allowed set (so a future package that needs more is refused clearly).
* ``repoint FILE``: after ``patchelf --clear-symbol-version`` has detached the
  allowed symbols from their version, the version *requirement* itself
  (an entry in ``.gnu.version_r``) is still there and the loader refuses to
  start the program.  This re-points every such unused requirement at an
  older version string that already exists in ``.dynstr`` (``GLIBC_2.34``
  by default), updating its ELF hash and name offset.

Only 64-bit little-endian ELF (x86_64, aarch64) is handled; no dependencies
beyond the standard library.
"""

import argparse
import os
import re
import struct
import sys

SHT_DYNSYM = 11
SHT_GNU_VERNEED = 0x6FFFFFFE
SHT_GNU_VERSYM = 0x6FFFFFFF

DEFAULT_ALLOWED = ("__isoc23_strtol", "__isoc23_strtoul")


def elf_hash(name: bytes) -> int:
    """The SysV ELF hash, as stored in Vernaux.vna_hash."""
    h = 0
    for c in name:
        h = ((h << 4) + c) & 0xFFFFFFFF
        g = h & 0xF0000000
        if g:
            h ^= g >> 24
        h &= ~g & 0xFFFFFFFF
    return h


def glibc_version(name: str):
    """'GLIBC_2.38' -> (2, 38); anything else -> None."""
    m = re.fullmatch(r"GLIBC_(\d+)\.(\d+)(?:\.(\d+))?", name)
    return (int(m.group(1)), int(m.group(2))) if m else None


def host_glibc():
    """Version of the running glibc, e.g. (2, 36)."""
    text = os.confstr("CS_GNU_LIBC_VERSION")  # "glibc 2.36"
    major, minor = text.split()[1].split(".")[:2]
    return int(major), int(minor)


class Elf:
    """Just enough of an ELF64-LE reader for the version sections."""

    def __init__(self, path: str, data: bytearray):
        self.path = path
        self.data = data
        if data[:4] != b"\x7fELF":
            raise ValueError("not an ELF file")
        if data[4] != 2 or data[5] != 1:
            raise ValueError("only 64-bit little-endian ELF is supported")
        (self.e_shoff,) = struct.unpack_from("<Q", data, 0x28)
        self.e_shentsize, self.e_shnum = struct.unpack_from("<HH", data, 0x3A)
        self.sections = []
        for i in range(self.e_shnum if self.e_shoff else 0):
            off = self.e_shoff + i * self.e_shentsize
            # sh_name, sh_type, sh_flags, sh_addr, sh_offset, sh_size, sh_link,
            # sh_info, sh_addralign, sh_entsize
            self.sections.append(struct.unpack_from("<IIQQQQIIQQ", data, off))

    def section(self, sh_type):
        for sec in self.sections:
            if sec[1] == sh_type:
                return sec
        return None

    def cstr(self, strtab, offset: int) -> bytes:
        start = strtab[4] + offset
        end = self.data.index(b"\0", start)
        return bytes(self.data[start:end])

    def vernaux(self):
        """Yield (file, version name, entry offset, vna_other) of every requirement."""
        verneed = self.section(SHT_GNU_VERNEED)
        if verneed is None:
            return
        strtab = self.sections[verneed[6]]
        off = verneed[4]
        for _ in range(verneed[7]):  # sh_info = number of Verneed entries
            _vn_version, vn_cnt, vn_file, vn_aux, vn_next = struct.unpack_from("<HHIII", self.data, off)
            lib = self.cstr(strtab, vn_file).decode()
            aux = off + vn_aux
            for _ in range(vn_cnt):
                _hash, _flags, other, name, nxt = struct.unpack_from("<IHHII", self.data, aux)
                yield lib, self.cstr(strtab, name).decode(), aux, other
                aux += nxt
            if not vn_next:
                break
            off += vn_next

    def imported_versions(self):
        """Map version index -> list of undefined symbol names using it."""
        dynsym = self.section(SHT_DYNSYM)
        versym = self.section(SHT_GNU_VERSYM)
        result = {}
        if dynsym is None or versym is None:
            return result
        strtab = self.sections[dynsym[6]]
        count = dynsym[5] // 24
        for i in range(1, count):
            st_name, _info, _other, st_shndx = struct.unpack_from("<IBBH", self.data, dynsym[4] + i * 24)
            (ver,) = struct.unpack_from("<H", self.data, versym[4] + i * 2)
            ver &= 0x7FFF
            if st_shndx == 0 and ver > 1:  # undefined symbol with a version
                result.setdefault(ver, []).append(self.cstr(strtab, st_name).decode())
        return result

    def find_dynstr(self, strtab, text: str):
        """Offset of an existing NUL-terminated string inside a string table."""
        blob = bytes(self.data[strtab[4]:strtab[4] + strtab[5]])
        needle = text.encode() + b"\0"
        pos = 0
        while True:
            pos = blob.find(needle, pos)
            if pos < 0:
                return None
            if pos == 0 or blob[pos - 1] == 0:  # a whole string, not a suffix
                return pos
            pos += 1


def is_elf(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


def too_new_needs(elf: Elf, limit):
    """[(version name, [symbols])] for glibc versions newer than limit."""
    used = elf.imported_versions()
    out = []
    for lib, name, _off, other in elf.vernaux():
        v = glibc_version(name)
        if v and v > limit:
            out.append((name, used.get(other, [])))
    return out


def cmd_scan(args) -> int:
    limit = host_glibc() if args.max_glibc is None else tuple(int(x) for x in args.max_glibc.split("."))
    allowed = set(args.allow.split(",")) if args.allow else set(DEFAULT_ALLOWED)
    bad = False
    for root, _dirs, files in os.walk(args.dir):
        for fn in sorted(files):
            path = os.path.join(root, fn)
            if os.path.islink(path) or not is_elf(path):
                continue
            with open(path, "rb") as f:
                elf = Elf(path, bytearray(f.read()))
            for name, syms in too_new_needs(elf, limit):
                extra = sorted(set(syms) - allowed)
                rel = os.path.relpath(path, args.dir)
                print(f"{rel}: needs {name} for {', '.join(sorted(syms)) or '(no symbol)'}")
                if extra:
                    bad = True
                    print(f"{rel}: cannot provide {', '.join(extra)} ({name}) on glibc "
                          f"{limit[0]}.{limit[1]}", file=sys.stderr)
    return 1 if bad else 0


def cmd_repoint(args) -> int:
    limit = host_glibc() if args.max_glibc is None else tuple(int(x) for x in args.max_glibc.split("."))
    with open(args.file, "rb") as f:
        elf = Elf(args.file, bytearray(f.read()))
    verneed = elf.section(SHT_GNU_VERNEED)
    if verneed is None:
        return 0
    strtab = elf.sections[verneed[6]]
    target_off = elf.find_dynstr(strtab, args.to)
    if target_off is None:
        print(f"{args.file}: no '{args.to}' string in .dynstr to point at", file=sys.stderr)
        return 1
    used = elf.imported_versions()
    changed = 0
    for _lib, name, aux, other in list(elf.vernaux()):
        v = glibc_version(name)
        if not v or v <= limit:
            continue
        if used.get(other):
            print(f"{args.file}: {name} still used by {', '.join(used[other])}; "
                  "clear their symbol versions first", file=sys.stderr)
            return 1
        # Vernaux: vna_hash(u32) vna_flags(u16) vna_other(u16) vna_name(u32) vna_next(u32).
        # Keep flags, index (vna_other) and the chain; change hash and name.
        struct.pack_into("<I", elf.data, aux, elf_hash(args.to.encode()))
        struct.pack_into("<I", elf.data, aux + 8, target_off)
        print(f"{args.file}: {name} -> {args.to}")
        changed += 1
    if changed:
        tmp = args.file + ".elfcompat.tmp"
        with open(tmp, "wb") as f:
            f.write(elf.data)
        os.chmod(tmp, os.stat(args.file).st_mode & 0o7777)
        os.replace(tmp, args.file)
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("scan", help="list glibc needs newer than the host's")
    s.add_argument("dir")
    s.add_argument("--max-glibc", help="e.g. 2.36 (default: running glibc)")
    s.add_argument("--allow", help="comma separated symbols a shim provides")
    s.set_defaults(func=cmd_scan)
    r = sub.add_parser("repoint", help="re-point unused too-new version needs")
    r.add_argument("file")
    r.add_argument("--to", default="GLIBC_2.34")
    r.add_argument("--max-glibc", help="e.g. 2.36 (default: running glibc)")
    r.set_defaults(func=cmd_repoint)
    args = p.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
