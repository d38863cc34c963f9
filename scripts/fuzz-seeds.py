#!/usr/bin/env python3
"""fuzz-seeds.py [CORPUS] [OUT]: seed corpora for every fuzz target, cut from the real images in
CORPUS (default ../shared/corpus) and from images qemu-img makes, into OUT (default fuzz/corpus).

Each target gets the structure it parses, as it lies in real files: footers, dynamic headers,
BATs, locators, VHDX headers, region tables, metadata regions, logs (including both dirty ones),
whole small images. Nothing here is committed; run it before fuzzing (CI does).
"""
import bz2
import gzip
import hashlib
import os
import shutil
import struct
import subprocess
import sys
import tempfile

corpus = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "..", "shared", "corpus")
out = sys.argv[2] if len(sys.argv) > 2 else os.path.join(os.path.dirname(__file__), "..", "fuzz", "corpus")
MIB = 1 << 20


def load(path):
    if path.endswith(".gz"):
        return gzip.open(path).read()
    if path.endswith(".bz2"):
        return bz2.open(path).read()
    return open(path, "rb").read()


def seed(target, data):
    d = os.path.join(out, target)
    os.makedirs(d, exist_ok=True)
    name = hashlib.sha1(data).hexdigest()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def images():
    found = []
    for root, _, files in os.walk(corpus):
        for f in sorted(files):
            if f.endswith((".vhd", ".vhdx", ".vhd.gz", ".vhdx.gz", ".vhd.bz2", ".vhdx.bz2")):
                found.append(os.path.join(root, f))
    # Images qemu-img makes, including dirty logs through blkdebug.
    tmp = tempfile.mkdtemp()
    try:
        for fmt, opts, size in [("vpc", "subformat=dynamic", "6M"), ("vpc", "subformat=fixed", "1M"),
                                ("vhdx", "block_size=1M", "12M"), ("vhdx", "block_size=32M,log_size=4M", "100M")]:
            p = os.path.join(tmp, f"q-{len(found)}.{fmt}")
            subprocess.run(["qemu-img", "create", "-q", "-f", fmt, "-o", opts, p, size], check=True)
            subprocess.run(["qemu-io", "-f", fmt, "-c", "write -P 0x5a 0 4k", "-c", "write -P 0x6b 1M 512", p],
                           check=True, capture_output=True)
            found.append(p)
        conf = os.path.join(tmp, "bd.conf")
        with open(conf, "w") as f:
            f.write('[inject-error]\nevent = "pwritev"\niotype = "write"\nsector = "4096"\nerrno = "5"\nonce = "on"\n')
        dirty = os.path.join(tmp, "dirty.vhdx")
        subprocess.run(["qemu-img", "create", "-q", "-f", "vhdx", "-o", "block_size=1M", dirty, "16M"], check=True)
        subprocess.run(["qemu-io", "-f", "vhdx", "-c", "write -P 0x5a 0 4k", f"blkdebug:{conf}:{dirty}"],
                       capture_output=True)
        found.append(dirty)
        loaded = [(p, load(p)) for p in found]
    except (OSError, subprocess.CalledProcessError) as e:
        print(f"qemu-img images skipped: {e}", file=sys.stderr)
        loaded = [(p, load(p)) for p in found if not p.startswith(tmp)]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return loaded


def vhd_seeds(data):
    seed("vhd_footer", data[-512:])
    seed("vhd_footer", data[-4096:])
    if len(data) >= 1536 and data[:8] == b"conectix":
        off = struct.unpack(">Q", data[16:24])[0]
        header = data[off:off + 1024]
        seed("vhd_dynamic_header", header)
        table, entries, block = struct.unpack(">QII", header[16:32])
        bat = data[table:table + min(entries * 4, 4096)]
        seed("vhd_bat_bitmap", struct.pack("<IBBBB", entries, (block.bit_length() - 10) % 23, 3, 40, 0) + bat)
        for i in range(8):
            e = header[576 + 24 * i:600 + 24 * i]
            if e[:4] != b"\0\0\0\0":
                length, data_off = struct.unpack(">I", e[8:12])[0], struct.unpack(">Q", e[16:24])[0]
                seed("vhd_parent_locator", e + data[data_off:data_off + length])
        first = next((struct.unpack(">I", bat[i:i + 4])[0] for i in range(0, len(bat), 4)
                      if bat[i:i + 4] != b"\xff\xff\xff\xff"), None)
        if first is not None:
            seed("vhd_bat_bitmap", struct.pack("<IBBBB", 1, 12, 0, 200, 0) + data[first * 512:first * 512 + 512])
    if len(data) <= 3 * MIB:
        seed("open_bytes", data)


def vhdx_seeds(data):
    seed("vhdx_headers", data[64 * 1024:68 * 1024] + data[128 * 1024:132 * 1024])
    seed("vhdx_headers", data[:520])
    regions = data[192 * 1024:256 * 1024]
    seed("vhdx_region_table", regions)
    count = struct.unpack("<I", regions[8:12])[0]
    bat_at = meta_at = None
    for i in range(min(count, 8)):
        e = regions[16 + 32 * i:48 + 32 * i]
        if e[:4] == bytes.fromhex("6677c22d"):
            bat_at = struct.unpack("<Q", e[16:24])[0]
        if e[:4] == bytes.fromhex("06a27c8b"):
            meta_at = struct.unpack("<Q", e[16:24])[0]
    if meta_at is not None:
        meta = data[meta_at:meta_at + 64 * 1024 + 4096]
        seed("vhdx_metadata", meta)
        n = struct.unpack("<H", meta[10:12])[0]
        sector, block, vsize = 512, MIB, 0
        for i in range(min(n, 16)):
            e = meta[32 + 32 * i:64 + 32 * i]
            off, length = struct.unpack("<II", e[16:24])
            item = meta[off:off + length]
            if e[:4] == bytes.fromhex("2d5fd3a8"):
                seed("vhdx_metadata", item)
            if e[:4] == bytes.fromhex("3767a1ca"):
                block = struct.unpack("<I", item[:4])[0]
            if e[:4] == bytes.fromhex("2442a52f"):
                vsize = struct.unpack("<Q", item[:8])[0]
            if e[:4] == bytes.fromhex("1dbf4181"):
                sector = struct.unpack("<I", item[:4])[0]
        if bat_at is not None and vsize:
            head = bytes([(block.bit_length() - 21) % 9, 0 if sector == 512 else 1]) + struct.pack("<Q", vsize)
            seed("vhdx_bat", head + bytes([len(data) >> 24 or 1, 0]) + data[bat_at:bat_at + 64 * 1024])
    h1, h2 = data[64 * 1024:68 * 1024], data[128 * 1024:132 * 1024]
    current = h2 if struct.unpack("<Q", h2[8:16])[0] > struct.unpack("<Q", h1[8:16])[0] else h1
    log_guid = current[48:64]
    log_len, log_off = struct.unpack("<IQ", current[68:80])
    if log_off and log_len and log_guid != bytes(16):
        seed("vhdx_log", log_guid + data[log_off:log_off + log_len])
    elif log_off:
        seed("vhdx_log", bytes(16) + data[log_off:log_off + 64 * 1024])


for path, data in images():
    if data[:8] == b"vhdxfile":
        vhdx_seeds(data)
    elif data[:8] == b"conectix" or data[-512:-504] == b"conectix":
        vhd_seeds(data)
for frag in ("vhd/node-vhd/footer.bin", "vhd/node-vhd/header.bin"):
    p = os.path.join(corpus, frag)
    if os.path.exists(p):
        seed("open_bytes", load(p))
        seed("vhd_footer", load(p)[:512])
# The patch targets: each template untouched, and a few patches on headers.
for target, templates in (("open_vhd", 3), ("open_vhdx", 4)):
    for t in range(templates):
        seed(target, bytes([t]))
        seed(target, bytes([t]) + struct.pack("<IB", 512 + 28, 4) + b"\xff\xff\xff\xff")
        seed(target, bytes([t]) + struct.pack("<IB", 3 * MIB, 8) + bytes.fromhex("0600100000000000"))


def store_seeds():
    """A real store (made with the vhdkit example) cut into seeds."""
    here = os.path.dirname(os.path.abspath(__file__))
    binary = os.environ.get("VHDKIT_BIN") or os.path.join(here, "..", "target", "release", "examples", "vhdkit")
    if not os.path.exists(binary):
        subprocess.run(["cargo", "build", "-q", "--release", "--example", "vhdkit"], cwd=os.path.join(here, ".."), check=True)
    tmp = tempfile.mkdtemp()
    try:
        disk = os.path.join(tmp, "d.raw")
        with open(disk, "wb") as f:
            for i in range(48):
                f.write((bytes([i]) * 7 + b"vhdkit ") * (32768 // 8) if i % 3 else bytes(32768))
        keyfile = os.path.join(tmp, "key")
        env = dict(os.environ, VHDKIT_PASSWORD="fuzz", VHDKIT_NEW_PASSWORD="fuzz2")
        for comp, encrypt in (("none", False), ("zstd", False), ("zstd", True)):
            st = os.path.join(tmp, "store-" + comp + ("-enc" if encrypt else ""))
            crypt = ["--encrypt", "--key-file", keyfile] if encrypt else []
            key = ["--key-file", keyfile] if encrypt else []
            subprocess.run([binary, "store", "init", st, "--chunk-size", "64K", "--compression", comp, "--pack-size", "256K"]
                           + crypt, check=True, capture_output=True)
            if encrypt:
                subprocess.run([binary, "key", "add", st, "--argon2-memory", "64K", "--argon2-iterations", "1"] + key,
                               check=True, capture_output=True, env=env)
            vhdx = os.path.join(tmp, "d.vhdx")
            subprocess.run([binary, "convert", disk, vhdx, "--from", "raw", "--to", "vhdx"], check=True, capture_output=True)
            subprocess.run([binary, "backup", st, vhdx, "--name", "d"] + key, check=True, capture_output=True)
            with open(disk, "r+b") as f:
                f.seek(70000)
                f.write(b"changed" * 1000)
            subprocess.run([binary, "convert", disk, vhdx, "--from", "raw", "--to", "vhdx"], check=True, capture_output=True)
            subprocess.run([binary, "backup", st, vhdx, "--name", "d"] + key, check=True, capture_output=True)
            subprocess.run([binary, "backup", st, vhdx, "--name", "p", "--tag", "site=a",
                            "--attach", disk] + key, check=False, capture_output=True)
            for root, _, files in os.walk(st):
                for name in files:
                    data = open(os.path.join(root, name), "rb").read()
                    if name.endswith(".key"):
                        seed("store_key", data)
                    elif encrypt and data[:8] == b"VKSEAL01":
                        seed("store_envelope", data)
                    elif name.endswith(".manifest"):
                        seed("store_manifest", data)
                        hl = struct.unpack("<I", data[8:12])[0]
                        seed("store_manifest", data[8:12] + data[12:12 + hl] + data[12 + hl:-56])
                    elif name.endswith(".point"):
                        seed("store_point", data)
                    elif name.endswith(".idx"):
                        seed("store_index", data)
                    elif name.endswith(".pack"):
                        seed("store_pack", data)
                        off = 24
                        while off + 52 <= len(data) and data[off:off + 4] == b"VKCH":
                            stored = struct.unpack("<I", data[off + 12:off + 16])[0]
                            seed("store_chunk", data[off:off + 52 + stored])
                            off += 52 + stored
    except (OSError, subprocess.CalledProcessError) as e:
        print(f"store seeds skipped: {e}", file=sys.stderr)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


store_seeds()
for text in ('[{"offset": 4096, "length": 4096}, {"offset": 0, "length": 512}]',
             '{"ChangedByteOffsets": [0, 1048576], "ChangedByteLengths": [4096, 65536]}',
             '{"ChangedByteOffsets": 1024, "ChangedByteLengths": 10}',
             '{"startOffset": 0, "length": 1048576, "changedArea": [{"start": 6000, "length": 10000}]}'):
    seed("change_list", text.encode())


def nbd_seeds():
    """Client sides of NBD sessions: options, then requests."""
    def opt(o, data=b""):
        return b"IHAVEOPT" + struct.pack(">II", o, len(data)) + data

    def req(cmd, off, length, flags=0):
        return struct.pack(">IHHQQI", 0x25609513, flags, cmd, 7, off, length)
    name = b"fuzz"
    go = opt(7, struct.pack(">I", len(name)) + name + struct.pack(">HH", 1, 3))
    meta = opt(10, struct.pack(">I", len(name)) + name + struct.pack(">II", 1, 15) + b"base:allocation")
    flags = struct.pack(">I", 3)
    seed("nbd_session", flags + opt(3) + go + req(0, 0, 4096) + req(0, 1 << 19, 8192) + req(2, 0, 0))
    seed("nbd_session", flags + opt(8) + meta + go + req(7, 0, 1 << 20) + req(0, 0, 1 << 20) + req(0, 0, 600000, 4)
         + req(1, 0, 4) + b"abcd" + req(6, 0, 512) + req(3, 0, 0) + req(2, 0, 0))
    seed("nbd_session", flags + opt(6, struct.pack(">I", 0) + struct.pack(">H", 0)) + opt(1, name) + req(0, 100, 100))
    seed("nbd_session", flags + opt(9, struct.pack(">I", 0) + struct.pack(">I", 1) + struct.pack(">I", 5) + b"base:") + opt(2))


def fs_seeds():
    """Small partitioned disks (sfdisk) for fs_partitions; small NTFS, ext2/4 and FAT volumes made by
    mkntfs, mke2fs -d and mkfs.vfat + mcopy for fs_walk, each after its selector byte (0 NTFS,
    1 ext, 2 FAT). Tools that are missing skip their seeds."""
    tmp = tempfile.mkdtemp()
    try:
        def run(*args, **kw):
            return subprocess.run(list(args), check=True, capture_output=True, **kw)
        src = os.path.join(tmp, "src")
        os.makedirs(os.path.join(src, "dir", "sub"))
        for name, data in [("a.txt", b"hello\n"), ("dir/b.bin", bytes(range(256)) * 20), ("dir/sub/c", b"c" * 5000)]:
            with open(os.path.join(src, name), "wb") as f:
                f.write(data)
        for script in ["label: gpt\nsize=64KiB\nsize=64KiB\n", "label: dos\nsize=32KiB\ntype=f, size=128KiB\n"
                       "size=32KiB\nsize=32KiB\n"]:
            disk = os.path.join(tmp, "disk.raw")
            with open(disk, "wb") as f:
                f.truncate(320 * 1024)
            try:
                run("sfdisk", "-q", disk, input=script.encode())
                seed("fs_partitions", open(disk, "rb").read())
            except (OSError, subprocess.CalledProcessError) as e:
                print(f"fs_partitions seed skipped: {e}", file=sys.stderr)
        makers = [
            (1, "ext2.img", [["mke2fs", "-q", "-t", "ext2", "-b", "1024", "-N", "32", "-d", src, "-F", "{img}", "192K"]]),
            (1, "ext4.img", [["mke2fs", "-q", "-t", "ext4", "-b", "1024", "-N", "32", "-O", "^has_journal", "-d", src,
                              "-F", "{img}", "256K"]]),
            (2, "fat.img", [["mkfs.vfat", "-C", "{img}", "256"], ["mcopy", "-s", "-i", "{img}", os.path.join(src, "a.txt"),
                                                                  os.path.join(src, "dir"), "::/"]]),
            (0, "ntfs.img", [["truncate", "-s", "2M", "{img}"], ["mkntfs", "-F", "-f", "-q", "{img}"],
                             ["ntfscp", "-q", "{img}", os.path.join(src, "a.txt"), "a.txt"]]),
        ]
        for selector, name, steps in makers:
            img = os.path.join(tmp, name)
            try:
                for step in steps:
                    run(*[a.replace("{img}", img) for a in step])
                seed("fs_walk", bytes([selector]) + open(img, "rb").read())
            except (OSError, subprocess.CalledProcessError) as e:
                print(f"fs_walk seed {name} skipped: {e}", file=sys.stderr)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


nbd_seeds()
fs_seeds()
for target in sorted(os.listdir(out)):
    print(f"{target}: {len(os.listdir(os.path.join(out, target)))} seeds")
