#!/usr/bin/env python3
"""Independent reader for vhdkit encrypted stores (version 4), written from
docs/store-format.md alone, without reading the crate's code: it proves the
document is enough to read a store, and tests/store_crypt.rs runs it against
stores the crate writes, so the two cannot drift apart.

Needs: pip install blake3 crc32c zstandard cryptography argon2-cffi

Usage:
  reader.py STORE (--key-file FILE | --password-file FILE) BACKUP_ID OUT.raw
  reader.py STORE (--key-file FILE | --password-file FILE) --list
"""
import argparse
import json
import os
import re
import struct
import sys

import blake3
import crc32c as _crc32c
import zstandard
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.exceptions import InvalidTag
from argon2.low_level import hash_secret_raw, Type


class Corrupt(Exception):
    pass


def crc32c(*parts):
    c = 0
    for p in parts:
        c = _crc32c.crc32c(p, c)
    return c


def b3(data):
    return blake3.blake3(data).digest()


def derive_key(context, material):
    return blake3.blake3(material, derive_key_context=context).digest()


def keyed(key, data):
    return blake3.blake3(data, key=key).digest()


def compact(obj):
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


ID_RE = re.compile(r"^[A-Za-z0-9.\-]{1,64}$")


def check_id(i):
    if not ID_RE.match(i) or i in (".", ".."):
        raise Corrupt(f"not an id: {i!r}")
    return i


CTX_ID = "vhdkit store 2026-12-04 chunk id"
CTX_REC = "vhdkit store 2026-12-04 chunk record"
CTX_ENV = "vhdkit store 2026-12-04 sealed object"
CTX_CFG = "vhdkit store 2026-12-04 config mac"
CTX_KEYS = "vhdkit store 2026-12-04 key objects"
CTX_KEYFILE = "vhdkit store 2026-12-04 key file wrapping key"


def nonce(i, last):
    return struct.pack("<Q", i) + bytes([1 if last else 0]) + b"\0\0\0"


def subkey(purpose_key, salt):
    return keyed(purpose_key, salt)


class Store:
    def __init__(self, root):
        self.root = root
        self.M = None

    def path(self, key):
        return os.path.join(self.root, *key.split("/"))

    def read(self, key):
        with open(self.path(key), "rb") as f:
            return f.read()

    def exists(self, key):
        return os.path.exists(self.path(key))

    # ---------- config ----------
    def load_config(self):
        raw = self.read("config")
        cfg = json.loads(raw.decode("utf-8"))
        if not isinstance(cfg, dict):
            raise Corrupt("config is not an object")
        if cfg.get("format") != "vhdkit-store":
            raise Corrupt("config: bad format")
        if cfg.get("version") != 4 or "encryption" not in cfg:
            raise Corrupt(f"config: version {cfg.get('version')} is not an encrypted store (NotEncrypted)")
        order = ["format", "version", "store_id", "chunk_size", "compression", "zstd_level",
                 "pack_size", "created", "object_lock", "encryption", "mac", "checksum"]
        keys = list(cfg.keys())
        if [k for k in order if k in cfg] != keys:
            raise Corrupt(f"config: unexpected keys or order {keys}")
        enc = cfg["encryption"]
        if enc != {"cipher": "aes-256-gcm", "chunk_ids": "blake3-keyed"}:
            raise Corrupt(f"config: unsupported encryption {enc}")
        cs = cfg["chunk_size"]
        if not (isinstance(cs, int) and 65536 <= cs <= 4 << 20 and cs & (cs - 1) == 0):
            raise Corrupt("config: bad chunk_size")
        if cfg["compression"] not in ("none", "zstd"):
            raise Corrupt("config: bad compression")
        c = dict(cfg)
        c["checksum"] = ""
        if b3(compact(c)).hex() != cfg["checksum"]:
            raise Corrupt("config: checksum does not hold")
        self.cfg = cfg
        self.store_id = cfg["store_id"]
        self.chunk_size = cs

    def check_config_mac(self):
        c = dict(self.cfg)
        c["checksum"] = ""
        c["mac"] = ""
        if keyed(self.K_cfg, compact(c)).hex() != self.cfg["mac"]:
            raise Corrupt("config: MAC does not hold")

    # ---------- keys ----------
    def key_objects(self):
        d = self.path("keys")
        out = []
        for name in sorted(os.listdir(d)) if os.path.isdir(d) else []:
            if not name.endswith(".key"):
                continue
            p = os.path.join(d, name)
            if os.path.getsize(p) > 65536:
                continue
            try:
                obj = json.loads(open(p, "rb").read().decode("utf-8"))
            except Exception:
                continue
            if not isinstance(obj, dict) or obj.get("format") != "vhdkit-key" or obj.get("version") != 1:
                continue
            if obj.get("id") != name[:-4]:
                continue
            out.append(obj)
        return out

    def unlock(self, key_file=None, passphrase=None):
        kind = "key_file" if key_file is not None else "passphrase"
        cands = [o for o in self.key_objects() if o.get("kind") == kind]
        valid = []
        for o in cands:
            kdf = o.get("kdf", {})
            if o.get("cipher") != "aes-256-gcm":
                continue
            if kind == "passphrase":
                if kdf.get("algorithm") != "argon2id" or kdf.get("version") != 19:
                    continue
                m, t, p = kdf.get("memory_kib"), kdf.get("iterations"), kdf.get("parallelism")
                if not all(isinstance(x, int) for x in (m, t, p)):
                    continue
                if not (1 <= p <= 4 and 1 <= t <= 16 and 8 * p <= m <= 1 << 20):
                    continue  # refuse out-of-bounds costs before any work
                valid.append((m * t, o))
            else:
                if kdf.get("algorithm") != "blake3":
                    continue
                valid.append((0, o))
        valid.sort(key=lambda x: x[0])
        if kind == "key_file" and not (32 <= len(key_file) <= 1 << 20):
            raise Corrupt("key file must be 32 bytes to 1 MiB")
        for _, o in valid[:16]:
            kdf = o["kdf"]
            salt = bytes.fromhex(kdf["salt"])
            if len(salt) != 32:
                continue
            if kind == "passphrase":
                W = hash_secret_raw(passphrase, salt, time_cost=kdf["iterations"],
                                    memory_cost=kdf["memory_kib"], parallelism=kdf["parallelism"],
                                    hash_len=32, type=Type.ID, version=19)
            else:
                W = derive_key(CTX_KEYFILE, salt + key_file)
            ad = b"vhdkit key v1\0" + self.store_id.encode() + b"\0" + o["id"].encode()
            try:
                M = AESGCM(W).decrypt(bytes.fromhex(o["nonce"]), bytes.fromhex(o["wrapped"]), ad)
            except InvalidTag:
                continue
            if len(M) != 32:
                continue
            self.set_master(M)
            try:
                self.check_key_mac(o)
            except Corrupt as e:
                # planted or altered key object: counts for nothing, try the next one
                print(f"warning: {e}; skipped", file=sys.stderr)
                self.M = None
                continue
            self.check_config_mac()
            self.key_id = o["id"]
            return
        raise Corrupt(f"no {kind} key object opens with the given key")

    def set_master(self, M):
        self.M = M
        self.K_id = derive_key(CTX_ID, M)
        self.K_rec = derive_key(CTX_REC, M)
        self.K_env = derive_key(CTX_ENV, M)
        self.K_cfg = derive_key(CTX_CFG, M)
        self.K_keys = derive_key(CTX_KEYS, M)

    def check_key_mac(self, o):
        c = dict(o)
        c["mac"] = ""
        if keyed(self.K_keys, compact(c)).hex() != o["mac"]:
            raise Corrupt(f"key object {o['id']}: MAC does not hold")

    def check_all_key_macs(self):
        res = {}
        for o in self.key_objects():
            try:
                self.check_key_mac(o)
                res[o["id"]] = True
            except Corrupt:
                res[o["id"]] = False
        return res

    # ---------- envelopes ----------
    def open_envelope(self, data, key):
        if len(data) < 32 + 20:
            raise Corrupt(f"{key}: envelope too short")
        hdr = data[:32]
        if hdr[:8] != b"VKSEAL01":
            raise Corrupt(f"{key}: bad envelope signature")
        s, hcrc = struct.unpack_from("<II", hdr, 8)
        if crc32c(hdr[0:12], hdr[16:32]) != hcrc:
            raise Corrupt(f"{key}: envelope header CRC")
        if not (4096 <= s <= 4194304):
            raise Corrupt(f"{key}: bad segment size {s}")
        salt = hdr[16:32]
        body = len(data) - 32
        # body = p + 20 n, n = max(1, ceil(p/s)); full segments are s+20 bytes
        n = max(1, -(-body // (s + 20)))
        p = body - 20 * n
        if p < 0 or max(1, -(-p // s)) != n:
            raise Corrupt(f"{key}: envelope size {len(data)} fits no plaintext length")
        aes = AESGCM(subkey(self.K_env, salt))
        ad = hdr + key.encode("utf-8")
        out = []
        pos = 32
        for i in range(n):
            clen = min(s, p - i * s)
            seg = data[pos:pos + clen + 16]
            crc, = struct.unpack_from("<I", data, pos + clen + 16)
            if crc32c(seg) != crc:
                raise Corrupt(f"{key}: segment {i} CRC")
            try:
                out.append(aes.decrypt(nonce(i, i == n - 1), seg, ad))
            except InvalidTag:
                raise Corrupt(f"{key}: segment {i} does not open")
            pos += clen + 20
        return b"".join(out)

    def read_sealed(self, key):
        return self.open_envelope(self.read(key), key)

    # ---------- damaged / dropped ----------
    def damaged(self):
        d = self.path("damaged")
        return set(os.listdir(d)) if os.path.isdir(d) else set()

    def tombstoned(self, id_):
        key = f"dropped/{id_}"
        if not self.exists(key):
            return False
        try:
            self.read_sealed(key)
            return True
        except Corrupt:
            return False  # a tombstone that does not open counts for nothing

    # ---------- index ----------
    def load_index(self):
        self.index = {}
        d = self.path("index")
        for name in sorted(os.listdir(d)) if os.path.isdir(d) else []:
            if not name.endswith(".idx"):
                continue
            key = f"index/{name}"
            P = self.read_sealed(key)
            if len(P) < 16 + 32 or P[:8] != b"VKINDEX1":
                raise Corrupt(f"{key}: bad index header")
            count, = struct.unpack_from("<Q", P, 8)
            if len(P) != 16 + 64 * count + 32:
                raise Corrupt(f"{key}: bad length")
            if b3(P[:-32]) != P[-32:]:
                raise Corrupt(f"{key}: hash does not hold")
            prev = None
            for j in range(count):
                e = P[16 + 64 * j:16 + 64 * (j + 1)]
                cid, pid = e[:32], e[32:48]
                off, rlen, plen = struct.unpack_from("<QII", e, 48)
                if prev is not None and cid < prev:
                    raise Corrupt(f"{key}: entries not sorted")
                prev = cid
                self.index.setdefault(cid, []).append((pid.hex(), off, rlen, plen))

    def pack_key(self, pid):
        return f"packs/{pid[:2]}/{pid}.pack"

    # ---------- records ----------
    def read_chunk(self, cid):
        locs = self.index.get(cid)
        if not locs:
            raise Corrupt(f"chunk {cid.hex()} is in no index file")
        damaged = self.damaged()
        errs = []
        for pid, off, rlen, plen in locs:
            if f"{cid.hex()}.{pid}" in damaged:
                continue
            key = self.pack_key(pid)
            if not self.exists(key):
                errs.append(f"{key}: missing")
                continue
            try:
                with open(self.path(key), "rb") as f:
                    f.seek(off)
                    rec = f.read(rlen)
                data = self.open_record(rec, cid, key, off)
                if len(data) != plen:
                    raise Corrupt(f"{key}@{off}: plain length differs from index")
                return data
            except Corrupt as e:
                errs.append(str(e))
        raise Corrupt(f"chunk {cid.hex()}: no sound copy ({'; '.join(errs) or 'all damaged'})")

    def open_record(self, rec, cid, key, off, check_crc=True):
        where = f"{key}@{off}"
        if len(rec) < 52:
            raise Corrupt(f"{where}: short record")
        if rec[:4] != b"VKCH":
            raise Corrupt(f"{where}: bad record magic")
        ver, comp = rec[4], rec[5]
        if ver != 2:
            raise Corrupt(f"{where}: record version {ver} (want 2)")
        if rec[6:8] != b"\0\0":
            raise Corrupt(f"{where}: reserved bytes")
        plen, slen = struct.unpack_from("<II", rec, 8)
        rid = rec[16:48]
        crc, = struct.unpack_from("<I", rec, 48)
        if rid != cid:
            raise Corrupt(f"{where}: record holds another chunk id")
        if len(rec) != 52 + slen or slen < 32:
            raise Corrupt(f"{where}: stored length")
        stored = rec[52:]
        if check_crc and crc32c(rec[:48], stored) != crc:
            raise Corrupt(f"{where}: record CRC")
        salt, ct = stored[:16], stored[16:]
        ad = b"vhdkit record v2" + rec[0:16] + rid
        assert len(ad) == 64
        try:
            body = AESGCM(subkey(self.K_rec, salt)).decrypt(nonce(0, True), ct, ad)
        except InvalidTag:
            raise Corrupt(f"{where}: record does not open")
        if comp == 0:
            plain = body
        elif comp == 1:
            try:
                plain = zstandard.ZstdDecompressor().decompress(body, max_output_size=plen)
            except zstandard.ZstdError as e:
                raise Corrupt(f"{where}: zstd: {e}")
        else:
            raise Corrupt(f"{where}: unknown compression {comp}")
        if len(plain) != plen:
            raise Corrupt(f"{where}: plain length")
        if keyed(self.K_id, plain) != cid:
            raise Corrupt(f"{where}: keyed hash is not the chunk id")
        return plain

    # ---------- packs (walk, for verification) ----------
    def pack_entries(self, pid):
        key = self.pack_key(pid)
        data = self.read(key)
        if data[:8] != b"VKPACK01" or data[8:24] != bytes.fromhex(pid):
            raise Corrupt(f"{key}: bad pack header")
        tr = data[-32:]
        if tr[:8] != b"VKPIDXS1" or tr[24:32] != b"VKPEND01":
            raise Corrupt(f"{key}: bad trailer")
        ioff, cnt, icrc = struct.unpack_from("<QII", tr, 8)
        env = data[ioff:len(data) - 32]
        if crc32c(env) != icrc:
            raise Corrupt(f"{key}: pack index CRC")
        P = self.open_envelope(env, key)
        if len(P) != 44 * cnt:
            raise Corrupt(f"{key}: pack index length")
        return [(P[44 * j:44 * j + 32],) + struct.unpack_from("<QI", P, 44 * j + 32) for j in range(cnt)]

    # ---------- manifests ----------
    def manifest_ids(self):
        d = self.path("manifests")
        ids = set()
        for name in os.listdir(d) if os.path.isdir(d) else []:
            if name.endswith(".manifest"):
                ids.add(name[:-len(".manifest")].split("~")[0])
        return sorted(ids)

    def load_manifest(self, bid):
        check_id(bid)
        key = f"manifests/{bid}~1.manifest"
        if not self.exists(key):
            key = f"manifests/{bid}.manifest"
        if not self.exists(key):
            raise Corrupt(f"backup {bid}: no manifest")
        P = self.read_sealed(key)
        if P[:8] != b"VKMANIF1":
            raise Corrupt(f"{key}: bad manifest signature")
        hl, = struct.unpack_from("<I", P, 8)
        hdr = json.loads(P[12:12 + hl].decode("utf-8"))
        if len(P) < 12 + hl + 56:
            raise Corrupt(f"{key}: short")
        tr = P[-56:]
        if tr[:8] != b"VKMEND01":
            raise Corrupt(f"{key}: bad trailer")
        nslots, nstored = struct.unpack_from("<QQ", tr, 8)
        if b3(P[:-56]) != tr[24:56]:
            raise Corrupt(f"{key}: manifest hash does not hold")
        # header checks
        if hdr.get("id") != bid:
            raise Corrupt(f"{key}: header id {hdr.get('id')!r} is not {bid}")
        cs = hdr.get("chunk_size")
        if not (isinstance(cs, int) and 65536 <= cs <= 4 << 20 and cs & (cs - 1) == 0):
            raise Corrupt(f"{key}: bad chunk_size")
        kind = hdr.get("kind")
        par = hdr.get("parent")
        if kind == "full":
            if par is not None:
                raise Corrupt(f"{key}: full backup with a parent")
        elif kind == "incremental":
            if not isinstance(par, str) or par == bid:
                raise Corrupt(f"{key}: bad parent")
            check_id(par)
        else:
            raise Corrupt(f"{key}: bad kind")
        vs = hdr["virtual_size"]
        total = -(-vs // cs)
        if nslots != total:
            raise Corrupt(f"{key}: slot count {nslots} != {total}")
        # body
        body = P[12 + hl:-56]
        slots = []  # each: bytes (chunk id), None (zero), or "P" (as parent)
        i = 0
        stored = 0
        while i < len(body):
            tag = body[i]
            i += 1
            if tag == 1:
                if i + 32 > len(body):
                    raise Corrupt(f"{key}: truncated record")
                slots.append(body[i:i + 32])
                i += 32
                stored += 1
            elif tag in (2, 3):
                n = 0
                shift = 0
                while True:
                    if i >= len(body):
                        raise Corrupt(f"{key}: truncated varint")
                    b = body[i]
                    i += 1
                    n |= (b & 0x7F) << shift
                    shift += 7
                    if not b & 0x80:
                        break
                    if shift > 63:
                        raise Corrupt(f"{key}: varint too long")
                if tag == 3 and kind != "incremental":
                    raise Corrupt(f"{key}: 0x03 in a full manifest")
                if len(slots) + n > nslots:
                    raise Corrupt(f"{key}: too many slots")
                slots.extend([None if tag == 2 else "P"] * n)
            else:
                raise Corrupt(f"{key}: unknown body tag {tag:#x}")
            if len(slots) > nslots:
                raise Corrupt(f"{key}: too many slots")
        if len(slots) != nslots:
            raise Corrupt(f"{key}: body covers {len(slots)} slots, trailer says {nslots}")
        if stored != nstored:
            raise Corrupt(f"{key}: {stored} stored slots, trailer says {nstored}")
        hdr["_key"] = key
        hdr["_stored"] = (stored, nstored)
        return hdr, slots

    def committed(self, bid, hdr):
        if self.tombstoned(bid):
            return False
        pt = hdr.get("point")
        if pt is not None:
            check_id(pt)
            if not self.exists(f"points/{pt}.point") or self.tombstoned(pt):
                return False
        return True

    def effective_map(self, bid):
        hdr, slots = self.load_manifest(bid)
        if not self.committed(bid, hdr):
            raise Corrupt(f"backup {bid} is not committed")
        vs, cs = hdr["virtual_size"], hdr["chunk_size"]
        seen = {bid}
        cur = hdr
        eff = list(slots)
        links = 0
        # Walk to the full backup (the doc requires the whole chain to be
        # valid), filling as-parent slots from each parent on the way.
        while any(s == "P" for s in eff) or cur["kind"] == "incremental":
            par = cur["parent"]
            if cur["kind"] != "incremental" or par is None:
                raise Corrupt("chain: as-parent slots without a parent")
            if par in seen:
                raise Corrupt(f"chain: {par} visited twice")
            links += 1
            if links > 10000:
                raise Corrupt("chain: longer than 10,000 links")
            seen.add(par)
            try:
                phdr, pslots = self.load_manifest(par)
            except FileNotFoundError:
                raise Corrupt(f"chain: parent {par} missing (damage in {cur['id']})")
            except Corrupt as e:
                raise Corrupt(f"chain: parent {par}: {e}")
            if phdr["virtual_size"] != vs or phdr["chunk_size"] != cs:
                raise Corrupt(f"chain: {par} differs in size or chunk size")
            eff = [p if s == "P" else s for s, p in zip(eff, pslots)]
            cur = phdr
        return hdr, eff

    def restore(self, bid, out):
        hdr, eff = self.effective_map(bid)
        vs, cs = hdr["virtual_size"], hdr["chunk_size"]
        tmp = out + ".part"
        with open(tmp, "wb") as f:
            for i, s in enumerate(eff):
                n = min(cs, vs - i * cs)
                if s is None:
                    f.write(b"\0" * n)
                else:
                    data = self.read_chunk(s)
                    if len(data) != n:
                        raise Corrupt(f"slot {i}: chunk length {len(data)} != {n}")
                    f.write(data)
        os.replace(tmp, out)
        return hdr


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("store")
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--key-file")
    g.add_argument("--password-file")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--verify-packs", action="store_true",
                    help="also walk every pack, its sealed index and every record")
    ap.add_argument("backup", nargs="?")
    ap.add_argument("out", nargs="?")
    a = ap.parse_intermixed_args()
    st = Store(a.store)
    try:
        st.load_config()
        if a.key_file:
            st.unlock(key_file=open(a.key_file, "rb").read())
        else:
            pw = open(a.password_file, "rb").read().split(b"\n")[0].rstrip(b"\r")
            st.unlock(passphrase=pw)
        print(f"opened with key object {st.key_id}; config checksum and MAC hold", file=sys.stderr)
        for kid, ok in st.check_all_key_macs().items():
            print(f"key object {kid}: MAC {'holds' if ok else 'DOES NOT HOLD (counts for nothing)'}", file=sys.stderr)
        st.load_index()
        if a.verify_packs:
            for pid in sorted({l[0] for ls in st.index.values() for l in ls}):
                for cid, off, rlen in st.pack_entries(pid):
                    with open(st.path(st.pack_key(pid)), "rb") as f:
                        f.seek(off)
                        st.open_record(f.read(rlen), cid, st.pack_key(pid), off)
            print("all packs verified", file=sys.stderr)
        if a.list:
            for bid in st.manifest_ids():
                try:
                    hdr, _ = st.load_manifest(bid)
                except Corrupt as e:
                    print(f"{bid}\tDAMAGED: {e}")
                    continue
                if not st.committed(bid, hdr):
                    continue
                gen = "~1" if hdr["_key"].endswith("~1.manifest") else ""
                print(f"{bid}\t{hdr['kind']}\tparent={hdr['parent']}\tname={hdr.get('name')}\t"
                      f"size={hdr['virtual_size']}\tcreated={hdr['created']}" + ("\tmerged" if gen else ""))
            return 0
        if not a.backup or not a.out:
            ap.error("BACKUP_ID and OUT.raw are required unless --list")
        hdr = st.restore(a.backup, a.out)
        print(f"restored {a.backup} ({hdr['virtual_size']} bytes) to {a.out}", file=sys.stderr)
        return 0
    except (Corrupt, FileNotFoundError, ValueError, KeyError, struct.error) as e:
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
