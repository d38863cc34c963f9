//! The NBD server: serve backups to `qemu-nbd`, `nbdcopy`, a hypervisor or
//! the kernel's NBD client, over TCP everywhere and Unix sockets where they
//! exist (elsewhere `unix:` addresses are `VHDKIT_UNSUPPORTED`).

use std::ffi::c_char;

use super::args;
use super::callbacks::vhdkit_cancel;
use super::error::{Fail, call, vhdkit_error, vhdkit_status};
use super::restore::vhdkit_reader;

/// An NBD server over a set of readers, each an export.
pub struct vhdkit_nbd_server {
    _opaque: [u8; 0],
}

mod imp {
    use std::net::TcpListener;
    use std::sync::Mutex;

    use serde::Deserialize;

    use super::super::args;
    use super::super::callbacks::{CANCELS, vhdkit_cancel};
    use super::super::error::{Fail, VHDKIT_IO};
    use super::super::handles::Table;
    use super::super::restore::{READERS, vhdkit_reader};
    use crate::CancelToken;
    use crate::nbd::{Export, Listener, Server, ServerOptions};

    /// A server and, once bound, where it listens.
    pub struct NbdServer {
        server: Server,
        listener: Mutex<Option<Listener>>,
    }

    pub static SERVERS: Table<NbdServer> = Table::new("vhdkit_nbd_server");

    #[derive(Debug, Default, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct ServerJson {
        max_connections: Option<usize>,
        default_export: Option<String>,
    }

    fn io_fail(what: String, e: std::io::Error) -> Fail {
        Fail { status: VHDKIT_IO, message: format!("{what}: {e}"), os_code: e.raw_os_error().unwrap_or(0) }
    }

    pub fn new(
        readers: &[*const vhdkit_reader],
        names: &[*const std::ffi::c_char],
        options_json: *const std::ffi::c_char,
    ) -> Result<*mut super::vhdkit_nbd_server, Fail> {
        let o: ServerJson = args::options(options_json, "options")?;
        let mut exports = Vec::with_capacity(readers.len());
        for (i, (r, n)) in readers.iter().zip(names).enumerate() {
            let reader = READERS.get(*r)?;
            let name = args::text(*n, &format!("names[{i}]"))?;
            exports.push(Export::new(name, reader));
        }
        let mut options = ServerOptions::default();
        if let Some(n) = o.max_connections {
            options.max_connections = n;
        }
        options.default_export = o.default_export;
        let server = Server::new(exports, options).map_err(|e| io_fail("nbd server".into(), e))?;
        Ok(SERVERS.insert(NbdServer { server, listener: Mutex::new(None) }))
    }

    /// Binds `address` (`host:port`, or `unix:PATH` where Unix sockets
    /// exist); the URL clients use.
    pub fn bind(server: *const super::vhdkit_nbd_server, address: &str) -> Result<String, Fail> {
        let s = SERVERS.get(server)?;
        let (listener, url) = if let Some(path) = address.strip_prefix("unix:") {
            unix_listener(path)?
        } else {
            let l = TcpListener::bind(address).map_err(|e| io_fail(format!("bind {address}"), e))?;
            let at = l.local_addr().map_err(|e| io_fail(format!("bind {address}"), e))?;
            (Listener::Tcp(l), format!("nbd://{at}"))
        };
        *s.listener.lock().unwrap_or_else(|p| p.into_inner()) = Some(listener);
        Ok(url)
    }

    #[cfg(unix)]
    fn unix_listener(path: &str) -> Result<(Listener, String), Fail> {
        let l = std::os::unix::net::UnixListener::bind(path).map_err(|e| io_fail(format!("bind {path}"), e))?;
        Ok((Listener::Unix(l), format!("nbd+unix:///?socket={path}")))
    }

    #[cfg(not(unix))]
    fn unix_listener(path: &str) -> Result<(Listener, String), Fail> {
        Err(Fail::new(
            super::super::error::VHDKIT_UNSUPPORTED,
            format!("unix:{path}: Unix sockets are not available on this platform; bind host:port"),
        ))
    }

    pub fn serve(server: *const super::vhdkit_nbd_server, cancel: *const vhdkit_cancel) -> Result<(), Fail> {
        let s = SERVERS.get(server)?;
        let cancel: CancelToken = (*CANCELS.get(cancel)?).clone();
        let listener = s
            .listener
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .ok_or_else(|| Fail::argument("the server is not bound (vhdkit_nbd_server_bind), or already served"))?;
        s.server.serve(listener, &cancel).map_err(|e| io_fail("nbd serve".into(), e))
    }

    pub fn free(server: *const super::vhdkit_nbd_server) {
        SERVERS.remove(server);
    }
}

/// Makes a server exporting `count` readers, export `i` named `names[i]`.
/// Options, a JSON object or null: `max_connections`, `default_export`
/// (the export an empty name selects; by default the only one). The
/// server holds its own references: the readers may be freed after.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vhdkit_nbd_server_new(
    readers: *const *const vhdkit_reader,
    names: *const *const c_char,
    count: usize,
    options_json: *const c_char,
    out: *mut *mut vhdkit_nbd_server,
    err: *mut *mut vhdkit_error,
) -> vhdkit_status {
    call(err, || {
        args::out(out, "out")?;
        if readers.is_null() || names.is_null() || count == 0 || count > 4096 {
            return Err(Fail::argument("readers or names is null, or count is not 1 to 4096"));
        }
        // SAFETY: the caller passes two arrays of `count` entries.
        let (readers, names) =
            unsafe { (std::slice::from_raw_parts(readers, count), std::slice::from_raw_parts(names, count)) };
        args::put(out, imp::new(readers, names, options_json)?);
        Ok(())
    })
}

/// Binds the server to `address`: `host:port` for TCP (port 0 picks a free
/// one) or `unix:PATH` (not on Windows). `url_out` (may be null) receives the URL clients
/// use (`nbd://127.0.0.1:10809`), freed with `vhdkit_string_free`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vhdkit_nbd_server_bind(
    server: *const vhdkit_nbd_server,
    address: *const c_char,
    url_out: *mut *mut c_char,
    err: *mut *mut vhdkit_error,
) -> vhdkit_status {
    args::clear_json(url_out);
    call(err, || {
        let address = args::text(address, "address")?;
        let url = imp::bind(server, address)?;
        args::put_string(url_out, &url)
    })
}

/// Serves clients on this thread until `cancel` (required) is tripped,
/// then returns `VHDKIT_OK` once open connections are closed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vhdkit_nbd_server_serve(
    server: *const vhdkit_nbd_server,
    cancel: *const vhdkit_cancel,
    err: *mut *mut vhdkit_error,
) -> vhdkit_status {
    call(err, || imp::serve(server, cancel))
}

/// Frees a server (null is ignored); a serve running on it goes on until
/// its cancel handle is tripped.
#[unsafe(no_mangle)]
pub extern "C" fn vhdkit_nbd_server_free(server: *mut vhdkit_nbd_server) {
    imp::free(server);
}
