//! Instant restore over NBD, checked with clients we did not write:
//! qemu-img (convert, compare, map), qemu-io (random reads, writes into an
//! overlay) and, where installed, libnbd's nbdinfo and nbdcopy. And hostile
//! clients against the library's server directly.

// What only the Unix-only tests use is unused elsewhere.
#![cfg_attr(not(unix), allow(unused_imports, dead_code))]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use vhdkit::disk::OpenOptions;
use vhdkit::export::{Target, export};
use vhdkit::nbd::{Export, Listener, Server, ServerOptions};
use vhdkit::{CancelToken, ExtentState, VirtualDisk};

const MIB: usize = 1 << 20;

/// 24 MiB: noise, a 0x5a pattern at 4..6 MiB, and holes.
fn disk_bytes() -> Vec<u8> {
    let mut d = common::noise(5, 24 * MIB);
    d[2 * MIB..4 * MIB].fill(0);
    d[4 * MIB..6 * MIB].fill(0x5a);
    d[10 * MIB..17 * MIB].fill(0);
    d[23 * MIB..].fill(0);
    d
}

/// What needs qemu, libnbd and a signal to the CLI: Unix only (under Wine
/// the library's server is tested by the hostile clients below).
#[cfg(unix)]
mod with_unix_clients {
    use super::*;

    struct Served {
        child: Child,
        url: String,
    }

    impl Drop for Served {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    impl Served {
        /// Stops the server with SIGINT, as an operator would, and waits.
        fn stop(mut self) {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
            let status = self.child.wait().unwrap();
            assert!(status.success() || status.code() == Some(130), "serve ended with {status:?}");
        }
    }

    /// Runs `vhdkit serve ...` on a free loopback port; its first line is the URL.
    fn serve(args: &[&str]) -> Served {
        let mut child = Command::new(common::cli())
            .args(args)
            .args(["--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        out.read_line(&mut line).unwrap();
        // Keep reading: a closed pipe would end the server at its next line.
        std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
        assert!(line.starts_with("nbd://"), "serve printed {line:?}");
        Served { child, url: line.trim().to_string() }
    }

    fn run(cmd: &mut Command) -> String {
        common::run(cmd)
    }

    /// Data ranges `[start, end)` from `qemu-img map --output=json`.
    fn qemu_data(url: &str) -> Vec<(u64, u64)> {
        let out = run(Command::new("qemu-img").args(["map", "--output=json", "-f", "raw", url]));
        let map: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
        let mut data: Vec<(u64, u64)> = Vec::new();
        for e in map.iter().filter(|e| e["data"] == true) {
            let (s, l) = (e["start"].as_u64().unwrap(), e["length"].as_u64().unwrap());
            match data.last_mut() {
                Some(last) if last.1 == s => last.1 = s + l,
                _ => data.push((s, s + l)),
            }
        }
        data
    }

    fn our_data(disk: &dyn VirtualDisk) -> Vec<(u64, u64)> {
        let mut data: Vec<(u64, u64)> = Vec::new();
        for e in disk.extents(0..disk.info().virtual_size).unwrap().into_iter().filter(|e| e.state == ExtentState::Data)
        {
            match data.last_mut() {
                Some(last) if last.1 == e.offset => last.1 = e.offset + e.length,
                _ => data.push((e.offset, e.offset + e.length)),
            }
        }
        data
    }

    fn have_libnbd() -> bool {
        let ok = Command::new("nbdinfo").arg("--version").output().is_ok_and(|o| o.status.success());
        if !ok {
            assert!(
                std::env::var("VHDKIT_REQUIRE_LIBNBD").as_deref() != Ok("1"),
                "VHDKIT_REQUIRE_LIBNBD=1 but nbdinfo is missing (apt-get install libnbd-bin)"
            );
            eprintln!("SKIPPED: libnbd-bin (nbdinfo, nbdcopy) not installed");
        }
        ok
    }

    fn store_with_backup(dir: &Path, bytes: &[u8]) -> (String, std::path::PathBuf) {
        let image = dir.join("disk.vhdx");
        let raw = OpenOptions::new().open_raw_reader(Box::new(Arc::new(bytes.to_vec())), "source");
        export(&raw, &image, Target::Vhdx, &common::block_size(1 << 20)).unwrap();
        let store = dir.join("store");
        let cli = common::cli();
        run(Command::new(&cli).args(["store", "init"]).arg(&store).args([
            "--chunk-size",
            "256K",
            "--compression",
            "zstd",
        ]));
        run(Command::new(&cli).arg("backup").arg(&store).args(["--name", "vm"]).arg(&image));
        (store.to_string_lossy().into_owned(), image)
    }

    #[test]
    fn qemu_and_libnbd_read_a_served_backup_as_the_backup_restores() {
        if !common::have_qemu() {
            return;
        }
        let dir = common::scratch("nbd-read");
        let bytes = disk_bytes();
        let (store, image) = store_with_backup(&dir, &bytes);
        let served = serve(&["serve", &store, "vm"]);
        let copied = dir.join("copied.raw");
        run(Command::new("qemu-img").args(["convert", "-f", "raw", "-O", "raw", &served.url]).arg(&copied));
        let restored = dir.join("restored.raw");
        run(Command::new(common::cli()).arg("restore").arg(&store).args(["vm", "--to", "raw"]).arg(&restored));
        let qemu_view = dir.join("qemu.raw");
        run(Command::new("qemu-img").args(["convert", "-f", "vhdx", "-O", "raw"]).arg(&image).arg(&qemu_view));
        let got = std::fs::read(&copied).unwrap();
        assert!(got == bytes, "the export differs from the disk");
        assert!(got == std::fs::read(&restored).unwrap(), "the export differs from restore --to raw");
        assert!(got == std::fs::read(&qemu_view).unwrap(), "the export differs from qemu's view of the source");
        run(Command::new("qemu-img").args(["compare", "-f", "raw", "-F", "raw", &served.url]).arg(&qemu_view));

        // Block status agrees with the backup's allocation.
        let backup = vhdkit::store::Store::open(&store).unwrap().reader("vm").unwrap();
        let ours = our_data(&backup);
        assert!(!ours.is_empty());
        assert_eq!(qemu_data(&served.url), ours, "qemu-img map disagrees with the backup's allocation");

        // Random reads of the pattern and of the holes.
        let mut r = common::Rng::new(9);
        for _ in 0..32 {
            let off = 4 * MIB as u64 + r.below(2 * MIB as u64 - 8192);
            run(Command::new("qemu-io").args([
                "-f",
                "raw",
                "-r",
                "-c",
                &format!("read -P 0x5a {off} 4096"),
                &served.url,
            ]));
            let hole = 11 * MIB as u64 + r.below(5 * MIB as u64);
            run(Command::new("qemu-io").args([
                "-f",
                "raw",
                "-r",
                "-c",
                &format!("read -P 0 {hole} 4096"),
                &served.url,
            ]));
        }

        if have_libnbd() {
            let nbd_copied = dir.join("nbdcopy.raw");
            run(Command::new("nbdcopy").arg(&served.url).arg(&nbd_copied));
            assert!(std::fs::read(&nbd_copied).unwrap() == bytes, "nbdcopy read different bytes");
            let map = run(Command::new("nbdinfo").args(["--map", &served.url]));
            let mut data: Vec<(u64, u64)> = Vec::new();
            for line in map.lines() {
                let f: Vec<&str> = line.split_whitespace().collect();
                let (Some(o), Some(l), Some(t)) = (f.first(), f.get(1), f.get(2)) else { continue };
                let (o, l): (u64, u64) = (o.parse().unwrap(), l.parse().unwrap());
                if *t == "0" {
                    match data.last_mut() {
                        Some(last) if last.1 == o => last.1 = o + l,
                        _ => data.push((o, o + l)),
                    }
                }
            }
            assert_eq!(data, ours, "nbdinfo --map disagrees: {map}");
        }
        served.stop();
    }

    #[test]
    fn writes_land_in_the_overlay_and_back_up_as_an_incremental() {
        if !common::have_qemu() {
            return;
        }
        let dir = common::scratch("nbd-overlay");
        let bytes = disk_bytes();
        let (store, _) = store_with_backup(&dir, &bytes);
        let overlay = dir.join("vm.overlay");
        let served = serve(&["serve", &store, "vm", "--overlay", overlay.to_str().unwrap()]);
        let mut want = bytes.clone();
        // Whole blocks, a write across a block edge at an odd offset, zeros, a trim.
        let io = |cmd: &str| run(Command::new("qemu-io").args(["-f", "raw", "-c", cmd, &served.url]));
        io("write -P 0x77 1048576 65536");
        want[MIB..MIB + 65536].fill(0x77);
        io("write -P 0x33 200001 70000");
        want[200_001..270_001].fill(0x33);
        io("write -z 5242880 131072");
        want[5 * MIB..5 * MIB + 131_072].fill(0);
        io("discard 7340032 65536");
        want[7 * MIB..7 * MIB + 65536].fill(0);
        io("read -P 0x77 1048576 65536");
        io("read -P 0x33 200001 70000");
        io("read -P 0 5242880 131072");
        let copied = dir.join("merged.raw");
        run(Command::new("qemu-img").args(["convert", "-f", "raw", "-O", "raw", &served.url]).arg(&copied));
        assert!(std::fs::read(&copied).unwrap() == want, "the export does not read back what was written");
        served.stop();

        // The store is untouched.
        let cli = common::cli();
        let verify = run(Command::new(&cli).arg("verify").arg(&store).arg("--json"));
        assert!(verify.contains("\"ok\": true"), "{verify}");
        let restored = dir.join("restored.raw");
        run(Command::new(&cli).arg("restore").arg(&store).args(["vm", "--to", "raw"]).arg(&restored));
        assert!(std::fs::read(&restored).unwrap() == bytes, "the backup changed");

        // Backup + overlay: an incremental holding exactly the writes.
        let report = run(Command::new(&cli)
            .arg("backup")
            .arg(&store)
            .args(["--name", "vm", "--json", "--overlay"])
            .arg(&overlay)
            .arg("vm"));
        let report: serde_json::Value = serde_json::from_str(&report).unwrap();
        assert_eq!(report["kind"], "incremental", "{report}");
        assert_eq!(report["change_source"], "ranges", "{report}");
        std::fs::remove_file(&restored).unwrap();
        run(Command::new(&cli).arg("restore").arg(&store).args(["vm", "--to", "raw"]).arg(&restored));
        assert!(std::fs::read(&restored).unwrap() == want, "backup of the overlay restores different bytes");
    }
}

/// A library server on a free port, stopped when dropped.
struct LibServer {
    addr: std::net::SocketAddr,
    cancel: CancelToken,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for LibServer {
    fn drop(&mut self) {
        self.cancel.cancel();
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

fn lib_server(bytes: Vec<u8>) -> LibServer {
    let disk: Arc<dyn VirtualDisk> = Arc::new(OpenOptions::new().open_raw_reader(Box::new(Arc::new(bytes)), "mem"));
    let mut options = ServerOptions::default();
    options.max_connections = 16;
    let server = Server::new(vec![Export::new("mem", disk)], options).unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let cancel = CancelToken::new();
    let c = cancel.clone();
    let thread = std::thread::spawn(move || server.serve(Listener::Tcp(listener), &c).unwrap());
    LibServer { addr, cancel, thread: Some(thread) }
}

/// Connects, checks the greeting, and sends the client flags.
fn hello(addr: std::net::SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut greeting = [0u8; 18];
    s.read_exact(&mut greeting).unwrap();
    assert_eq!(&greeting[..8], b"NBDMAGIC");
    assert_eq!(&greeting[8..16], b"IHAVEOPT");
    s.write_all(&3u32.to_be_bytes()).unwrap();
    s
}

fn option(s: &mut TcpStream, opt: u32, data: &[u8]) {
    let mut m = b"IHAVEOPT".to_vec();
    m.extend_from_slice(&opt.to_be_bytes());
    m.extend_from_slice(&(data.len() as u32).to_be_bytes());
    m.extend_from_slice(data);
    s.write_all(&m).unwrap();
}

/// Reads one option reply: (option, type, data).
fn option_reply(s: &mut TcpStream) -> (u32, u32, Vec<u8>) {
    let mut h = [0u8; 20];
    s.read_exact(&mut h).unwrap();
    let len = u32::from_be_bytes(h[16..20].try_into().unwrap()) as usize;
    let mut d = vec![0u8; len];
    s.read_exact(&mut d).unwrap();
    (u32::from_be_bytes(h[8..12].try_into().unwrap()), u32::from_be_bytes(h[12..16].try_into().unwrap()), d)
}

fn closed(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 64];
    loop {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) => return e.kind() != std::io::ErrorKind::WouldBlock && e.kind() != std::io::ErrorKind::TimedOut,
        }
    }
}

/// Goes to transmission on export "mem" with NBD_OPT_GO (simple replies).
fn go(addr: std::net::SocketAddr) -> TcpStream {
    let mut s = hello(addr);
    let mut data = 3u32.to_be_bytes().to_vec();
    data.extend_from_slice(b"mem");
    data.extend_from_slice(&0u16.to_be_bytes());
    option(&mut s, 7, &data);
    loop {
        let (_, kind, _) = option_reply(&mut s);
        if kind == 1 {
            return s;
        }
        assert_eq!(kind, 3, "unexpected reply type {kind:#x}");
    }
}

fn request(s: &mut TcpStream, command: u16, offset: u64, length: u32) {
    let mut r = 0x2560_9513u32.to_be_bytes().to_vec();
    r.extend_from_slice(&0u16.to_be_bytes());
    r.extend_from_slice(&command.to_be_bytes());
    r.extend_from_slice(&42u64.to_be_bytes());
    r.extend_from_slice(&offset.to_be_bytes());
    r.extend_from_slice(&length.to_be_bytes());
    s.write_all(&r).unwrap();
}

/// A simple reply's error field.
fn simple_error(s: &mut TcpStream) -> u32 {
    let mut h = [0u8; 16];
    s.read_exact(&mut h).unwrap();
    assert_eq!(u32::from_be_bytes(h[..4].try_into().unwrap()), 0x6744_6698);
    u32::from_be_bytes(h[4..8].try_into().unwrap())
}

#[test]
fn hostile_clients_get_errors_or_a_closed_connection_and_the_server_lives_on() {
    let bytes = common::noise(3, 4 * MIB);
    let server = lib_server(bytes.clone());
    // Not fixed newstyle: closed.
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut g = [0u8; 18];
    s.read_exact(&mut g).unwrap();
    s.write_all(&0u32.to_be_bytes()).unwrap();
    assert!(closed(&mut s));
    // Bad option magic: closed.
    let mut s = hello(server.addr);
    s.write_all(b"NOTMAGIC\0\0\0\x07\0\0\0\0").unwrap();
    assert!(closed(&mut s));
    // Unknown option: an error reply, and the session goes on.
    let mut s = hello(server.addr);
    option(&mut s, 0x4242, b"xyz");
    assert_eq!(option_reply(&mut s).1, (1 << 31) | 1);
    // An unknown export: an error reply.
    let mut data = 4u32.to_be_bytes().to_vec();
    data.extend_from_slice(b"nope");
    data.extend_from_slice(&0u16.to_be_bytes());
    option(&mut s, 7, &data);
    assert_eq!(option_reply(&mut s).1, (1 << 31) | 6);
    // An option claiming 4 GiB of data: closed, nothing allocated.
    let mut m = b"IHAVEOPT".to_vec();
    m.extend_from_slice(&7u32.to_be_bytes());
    m.extend_from_slice(&u32::MAX.to_be_bytes());
    s.write_all(&m).unwrap();
    assert!(closed(&mut s));

    // Transmission: reads past the end, too large, writes to a read-only
    // export, unknown commands, a bad request magic.
    let mut s = go(server.addr);
    request(&mut s, 0, 4 * MIB as u64 - 10, 20);
    assert_eq!(simple_error(&mut s), 22);
    request(&mut s, 0, u64::MAX - 5, 4096);
    assert_eq!(simple_error(&mut s), 22);
    request(&mut s, 0, 0, 64 << 20);
    assert_eq!(simple_error(&mut s), 22);
    request(&mut s, 1, 0, 5);
    s.write_all(b"hello").unwrap();
    assert_eq!(simple_error(&mut s), 1);
    request(&mut s, 99, 0, 1);
    assert_eq!(simple_error(&mut s), 22);
    request(&mut s, 0, 4096, 4096);
    assert_eq!(simple_error(&mut s), 0);
    let mut got = vec![0u8; 4096];
    s.read_exact(&mut got).unwrap();
    assert!(got == bytes[4096..8192]);
    s.write_all(&[0xffu8; 28]).unwrap();
    assert!(closed(&mut s));
    // Half-closed in the middle of a handshake.
    let s = hello(server.addr);
    s.shutdown(std::net::Shutdown::Write).unwrap();
    drop(s);

    // Hundreds of connections at once: those past the limit are closed,
    // and the server serves afterwards.
    let many: Vec<TcpStream> = (0..200).filter_map(|_| TcpStream::connect(server.addr).ok()).collect();
    std::thread::sleep(Duration::from_millis(300));
    drop(many);
    std::thread::sleep(Duration::from_millis(300));
    let mut s = go(server.addr);
    request(&mut s, 0, 0, 512);
    assert_eq!(simple_error(&mut s), 0);
    let mut got = vec![0u8; 512];
    s.read_exact(&mut got).unwrap();
    assert!(got == bytes[..512]);
}
