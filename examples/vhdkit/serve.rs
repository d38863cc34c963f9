//! `vhdkit serve` and `vhdkit serve-image`: exports over NBD until SIGINT
//! or SIGTERM.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Args;
use vhdkit::CancelToken;
use vhdkit::VirtualDisk;
use vhdkit::cow::CowOverlay;
use vhdkit::disk::OpenOptions;
use vhdkit::nbd::{Export, Listener, Server, ServerOptions};

use super::Failure;
use super::store::open_store;

/// Where to listen, and how.
#[derive(Args)]
pub(crate) struct ServeArgs {
    /// TCP address to listen on (default loopback only; anything wider must be said here).
    #[arg(long, default_value = "127.0.0.1:10809", conflicts_with = "socket")]
    listen: String,
    /// A Unix socket to listen on instead of TCP.
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Make the export writable: writes, trims and write-zeroes land in this
    /// copy-on-write file (and FILE.map), never in the store or the image.
    #[arg(long)]
    overlay: Option<PathBuf>,
    /// Connections served at once.
    #[arg(long, default_value_t = 64)]
    max_connections: usize,
}

fn listen(args: &ServeArgs) -> Result<(Listener, String), Failure> {
    if let Some(path) = &args.socket {
        #[cfg(unix)]
        {
            let _ = std::fs::remove_file(path);
            let l = std::os::unix::net::UnixListener::bind(path)
                .map_err(|e| Failure::usage(format!("{}: {e}", path.display())))?;
            return Ok((Listener::Unix(l), format!("nbd+unix://{{}}?socket={}", path.display())));
        }
        // Rust's standard library has no AF_UNIX sockets on Windows.
        #[cfg(not(unix))]
        return Err(Failure::usage(format!(
            "--socket {}: Unix sockets are not available on this platform; serve over TCP with --listen HOST:PORT",
            path.display()
        )));
    }
    let l = TcpListener::bind(&args.listen).map_err(|e| Failure::usage(format!("{}: {e}", args.listen)))?;
    let addr = l.local_addr()?;
    Ok((Listener::Tcp(l), format!("nbd://{addr}{{}}")))
}

fn run(exports: Vec<Export>, args: &ServeArgs, cancel: &CancelToken) -> Result<u8, Failure> {
    let names: Vec<String> = exports.iter().map(|e| e.name.clone()).collect();
    let mut options = ServerOptions::default();
    options.max_connections = args.max_connections;
    let server = Server::new(exports, options)?;
    let (listener, pattern) = listen(args)?;
    let url = |name: &str| {
        if args.socket.is_some() {
            pattern.replace("{}", &format!("/{name}"))
        } else if name.is_empty() {
            pattern.replace("{}", "")
        } else {
            pattern.replace("{}", &format!("/{name}"))
        }
    };
    for n in &names {
        out!("{}", url(n));
    }
    if names.len() == 1 {
        out!("{}", url(""));
    }
    note!("serving until SIGINT or SIGTERM");
    server.serve(listener, cancel)?;
    if let Some(path) = &args.socket {
        let _ = std::fs::remove_file(path);
    }
    Ok(0)
}

fn with_overlay(export: Export, args: &ServeArgs) -> Result<Export, Failure> {
    let Some(path) = &args.overlay else { return Ok(export) };
    let overlay = Arc::new(
        CowOverlay::open(path, export.size()).map_err(|e| Failure::usage(format!("{}: {e}", path.display())))?,
    );
    Ok(export.with_overlay(overlay)?)
}

/// `vhdkit serve STORE BACKUP...`
pub(crate) fn serve(store: &Path, backups: &[String], args: &ServeArgs, cancel: &CancelToken) -> Result<u8, Failure> {
    if args.overlay.is_some() && backups.len() != 1 {
        return Err(Failure::usage("--overlay serves exactly one backup"));
    }
    let s = open_store(store)?;
    let mut exports = Vec::new();
    for spec in backups {
        let reader = s.reader(spec)?;
        let description = format!("backup {} of {}", reader.id(), store.display());
        let disk: Arc<dyn VirtualDisk> = Arc::new(reader);
        exports.push(with_overlay(Export::new(spec.clone(), disk).described(description), args)?);
    }
    run(exports, args, cancel)
}

/// `vhdkit serve-image IMAGE`
pub(crate) fn serve_image(
    options: &OpenOptions,
    image: &Path,
    args: &ServeArgs,
    cancel: &CancelToken,
) -> Result<u8, Failure> {
    let disk: Arc<dyn VirtualDisk> = Arc::new(options.open(image)?);
    let name = image.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "image".into());
    let export = with_overlay(Export::new(name, disk).described(image.display().to_string()), args)?;
    run(vec![export], args, cancel)
}
