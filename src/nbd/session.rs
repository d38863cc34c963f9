//! One client connection: the fixed newstyle handshake, then requests
//! until the client disconnects or the server shuts down.
//!
//! Memory per connection is bounded whatever the client sends: option
//! data past [`MAX_OPTION`] is discarded (or the connection closed), reads
//! are answered in pieces of [`PIECE`] bytes, write payloads refused on a
//! read-only export are drained through the same buffer, and a block
//! status reply holds at most [`MAX_DESCRIPTORS`] descriptors.

use std::io::{self, Read, Write};
use std::sync::Arc;

use super::proto::*;
use crate::disk::ExtentState;
use crate::nbd::{Export, ExportView};

/// The largest option data kept; no option this server knows needs more
/// (export names are at most 4 KiB by the protocol).
const MAX_OPTION: usize = 16 * 1024;
/// The largest option data drained before refusing it; beyond, the
/// connection is closed.
const MAX_DRAINED: usize = 1 << 20;
/// Options one handshake may send before the server gives up on it.
const MAX_OPTIONS: usize = 1024;
/// Bytes read from the disk per piece of a reply.
pub(crate) const PIECE: usize = 1 << 20;
/// The largest request served (and advertised): the protocol's default.
pub(crate) const MAX_BLOCK: u32 = 32 << 20;
/// The largest write payload drained from a client.
const MAX_PAYLOAD: u32 = 32 << 20;
/// Descriptors in one block status reply (a client asks again for the rest).
const MAX_DESCRIPTORS: usize = 4096;
/// The preferred block size advertised.
const PREFERRED_BLOCK: u32 = 64 * 1024;

/// Why a session ended early.
#[derive(Debug)]
pub(crate) enum End {
    /// The socket failed or closed (including a server shutdown).
    Io(io::Error),
    /// The client broke the protocol badly enough that the connection was
    /// closed.
    Protocol(String),
}

impl From<io::Error> for End {
    fn from(e: io::Error) -> End {
        End::Io(e)
    }
}

type Result<T> = std::result::Result<T, End>;

/// A session over any byte stream (a socket; the fuzz target's buffers).
pub(crate) struct Session<'a, S: Read + Write> {
    stream: S,
    exports: &'a [Arc<Export>],
    default: Option<usize>,
    structured: bool,
    /// The export `base:allocation` was selected for.
    meta_for: Option<String>,
    buf: Vec<u8>,
}

fn read_u32(r: &mut impl Read) -> io::Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_be_bytes(b))
}

fn read_u64(r: &mut impl Read) -> io::Result<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_be_bytes(b))
}

impl<'a, S: Read + Write> Session<'a, S> {
    /// A session serving `exports`; `default` is the export an empty name
    /// selects.
    pub(crate) fn new(stream: S, exports: &'a [Arc<Export>], default: Option<usize>) -> Self {
        Session { stream, exports, default, structured: false, meta_for: None, buf: Vec::new() }
    }

    /// Runs the session to its end.
    pub(crate) fn run(mut self) -> Result<()> {
        let Some((export, zeroes)) = self.handshake()? else { return Ok(()) };
        let _ = zeroes;
        self.transmission(&export)
    }

    fn find(&self, name: &str) -> Option<Arc<Export>> {
        if name.is_empty() {
            return self.default.and_then(|i| self.exports.get(i)).cloned();
        }
        self.exports.iter().find(|e| e.name == name).cloned()
    }

    fn reply(&mut self, option: u32, kind: u32, data: &[u8]) -> io::Result<()> {
        self.stream.write_all(&option_reply(option, kind, data))
    }

    fn error_reply(&mut self, option: u32, kind: u32, message: &str) -> io::Result<()> {
        self.reply(option, kind, message.as_bytes())?;
        self.stream.flush()
    }

    fn flags(&self, export: &Export) -> u16 {
        let mut flags = TF_HAS_FLAGS;
        if export.writable() {
            flags |= TF_SEND_FLUSH | TF_SEND_FUA | TF_SEND_TRIM | TF_SEND_WRITE_ZEROES;
        } else {
            flags |= TF_READ_ONLY | TF_CAN_MULTI_CONN;
        }
        if self.structured {
            flags |= TF_SEND_DF;
        }
        flags
    }

    /// The handshake: `Some(export)` when the client moved to transmission.
    fn handshake(&mut self) -> Result<Option<(Arc<Export>, bool)>> {
        let mut hello = Vec::with_capacity(18);
        hello.extend_from_slice(&NBDMAGIC.to_be_bytes());
        hello.extend_from_slice(&IHAVEOPT.to_be_bytes());
        hello.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
        self.stream.write_all(&hello)?;
        self.stream.flush()?;
        let client = read_u32(&mut self.stream)?;
        if client & u32::from(FLAG_FIXED_NEWSTYLE) == 0 {
            return Err(End::Protocol("the client does not speak fixed newstyle".into()));
        }
        if client & !u32::from(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES) != 0 {
            return Err(End::Protocol(format!("unknown client flags {client:#x}")));
        }
        let no_zeroes = client & u32::from(FLAG_NO_ZEROES) != 0;
        for _ in 0..MAX_OPTIONS {
            let magic = read_u64(&mut self.stream)?;
            if magic != IHAVEOPT {
                return Err(End::Protocol(format!("option magic {magic:#x}")));
            }
            let option = read_u32(&mut self.stream)?;
            let length = read_u32(&mut self.stream)? as usize;
            if length > MAX_OPTION {
                if length > MAX_DRAINED {
                    return Err(End::Protocol(format!("option {option} with {length} bytes of data")));
                }
                io::copy(&mut (&mut self.stream).take(length as u64), &mut io::sink())?;
                self.error_reply(option, REP_ERR_TOO_BIG, "option data too large")?;
                continue;
            }
            let mut data = vec![0u8; length];
            self.stream.read_exact(&mut data)?;
            match option {
                OPT_EXPORT_NAME => {
                    let name = String::from_utf8_lossy(&data).into_owned();
                    // No error reply is possible here: an unknown name ends
                    // the connection.
                    let export = self.find(&name).ok_or_else(|| End::Protocol(format!("no export {name:?}")))?;
                    let mut out = Vec::with_capacity(134);
                    out.extend_from_slice(&export.size().to_be_bytes());
                    out.extend_from_slice(&self.flags(&export).to_be_bytes());
                    if !no_zeroes {
                        out.extend_from_slice(&[0u8; 124]);
                    }
                    self.stream.write_all(&out)?;
                    self.stream.flush()?;
                    return Ok(Some((export, no_zeroes)));
                }
                OPT_ABORT => {
                    let _ = self.error_reply(option, REP_ACK, "");
                    return Ok(None);
                }
                OPT_LIST => {
                    if !data.is_empty() {
                        self.error_reply(option, REP_ERR_INVALID, "NBD_OPT_LIST takes no data")?;
                        continue;
                    }
                    for e in self.exports {
                        let mut d = Vec::new();
                        d.extend_from_slice(&(e.name.len() as u32).to_be_bytes());
                        d.extend_from_slice(e.name.as_bytes());
                        d.extend_from_slice(e.description.as_bytes());
                        self.stream.write_all(&option_reply(option, REP_SERVER, &d))?;
                    }
                    self.error_reply(option, REP_ACK, "")?;
                }
                OPT_INFO | OPT_GO => {
                    let Some(request) = parse_info(&data) else {
                        self.error_reply(option, REP_ERR_INVALID, "malformed info request")?;
                        continue;
                    };
                    let Some(export) = self.find(request.name) else {
                        self.error_reply(option, REP_ERR_UNKNOWN, "no such export")?;
                        continue;
                    };
                    let mut info = Vec::new();
                    info.extend_from_slice(&INFO_EXPORT.to_be_bytes());
                    info.extend_from_slice(&export.size().to_be_bytes());
                    info.extend_from_slice(&self.flags(&export).to_be_bytes());
                    self.reply(option, REP_INFO, &info)?;
                    let mut block = Vec::new();
                    block.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
                    for v in [1, PREFERRED_BLOCK, MAX_BLOCK] {
                        block.extend_from_slice(&v.to_be_bytes());
                    }
                    self.reply(option, REP_INFO, &block)?;
                    for kind in request.requests {
                        let text = match kind {
                            INFO_NAME => &export.name,
                            INFO_DESCRIPTION => &export.description,
                            _ => continue,
                        };
                        let mut d = kind.to_be_bytes().to_vec();
                        d.extend_from_slice(text.as_bytes());
                        self.reply(option, REP_INFO, &d)?;
                    }
                    self.error_reply(option, REP_ACK, "")?;
                    if option == OPT_GO {
                        return Ok(Some((export, no_zeroes)));
                    }
                }
                OPT_STRUCTURED_REPLY => {
                    if !data.is_empty() || self.structured {
                        self.error_reply(option, REP_ERR_INVALID, "structured replies already on, or data given")?;
                        continue;
                    }
                    self.structured = true;
                    self.error_reply(option, REP_ACK, "")?;
                }
                OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => {
                    if !self.structured {
                        self.error_reply(option, REP_ERR_INVALID, "negotiate structured replies first")?;
                        continue;
                    }
                    let Some(request) = parse_meta(&data) else {
                        self.error_reply(option, REP_ERR_INVALID, "malformed meta context request")?;
                        continue;
                    };
                    let Some(target) = self.find(request.name) else {
                        self.error_reply(option, REP_ERR_UNKNOWN, "no such export")?;
                        continue;
                    };
                    let set = option == OPT_SET_META_CONTEXT;
                    let wanted = if request.queries.is_empty() && !set {
                        true
                    } else {
                        request.queries.iter().any(|q| *q == BASE_ALLOCATION || (!set && *q == "base:"))
                    };
                    if set {
                        self.meta_for = wanted.then(|| target.name.clone());
                    }
                    if wanted {
                        let mut d = (if set { 1u32 } else { 0u32 }).to_be_bytes().to_vec();
                        d.extend_from_slice(BASE_ALLOCATION.as_bytes());
                        self.reply(option, REP_META_CONTEXT, &d)?;
                    }
                    self.error_reply(option, REP_ACK, "")?;
                }
                OPT_STARTTLS => self.error_reply(option, REP_ERR_POLICY, "TLS is not offered")?,
                _ => self.error_reply(option, REP_ERR_UNSUP, "unknown option")?,
            }
        }
        Err(End::Protocol(format!("more than {MAX_OPTIONS} options")))
    }

    /// Requests until the client disconnects.
    fn transmission(&mut self, export: &Export) -> Result<()> {
        let view = export.view();
        loop {
            let mut head = [0u8; REQUEST_LEN];
            match self.stream.read_exact(&mut head) {
                Ok(()) => {}
                // A client that just goes away is done.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(e.into()),
            }
            let request = parse_request(&head).ok_or_else(|| End::Protocol("bad request magic".into()))?;
            if request.command == CMD_DISC {
                return Ok(());
            }
            self.serve(&view, export, request)?;
            self.stream.flush()?;
        }
    }

    fn serve(&mut self, view: &ExportView<'_>, export: &Export, r: Request) -> Result<()> {
        let size = export.size();
        let in_range = r.length > 0 && r.offset.checked_add(u64::from(r.length)).is_some_and(|end| end <= size);
        match r.command {
            CMD_READ => {
                if !in_range {
                    return self.fail(r, EINVAL, "read outside the export");
                }
                if r.length > MAX_BLOCK {
                    return self.fail(
                        r,
                        if self.structured { EOVERFLOW } else { EINVAL },
                        "read larger than the maximum",
                    );
                }
                if self.structured { self.read_structured(view, r) } else { self.read_simple(view, r) }
            }
            CMD_WRITE => {
                if r.length > MAX_PAYLOAD {
                    return Err(End::Protocol(format!("write of {} bytes", r.length)));
                }
                let mut payload = std::mem::take(&mut self.buf);
                payload.resize(r.length as usize, 0);
                self.stream.read_exact(&mut payload)?;
                let result = self.write_request(view, export, r, in_range, &payload);
                self.buf = payload;
                result
            }
            CMD_WRITE_ZEROES | CMD_TRIM => {
                if !export.writable() {
                    return self.fail(r, EPERM, "the export is read-only");
                }
                if !in_range {
                    return self.fail(r, EINVAL, "outside the export");
                }
                match view.zero(r.offset, u64::from(r.length), r.command == CMD_TRIM || r.flags & CMD_FLAG_NO_HOLE == 0)
                {
                    Ok(()) => self.ok(r),
                    Err(e) => self.fail(r, EIO, &e.to_string()),
                }
            }
            CMD_FLUSH => match view.flush() {
                Ok(()) => self.ok(r),
                Err(e) => self.fail(r, EIO, &e.to_string()),
            },
            CMD_CACHE => self.ok(r),
            CMD_BLOCK_STATUS => {
                let selected = self.meta_for.as_deref() == Some(export.name.as_str());
                if !self.structured || !selected {
                    return self.fail(r, EINVAL, "no metadata context was selected");
                }
                if !in_range {
                    return self.fail(r, EINVAL, "block status outside the export");
                }
                self.block_status(view, r)
            }
            _ => self.fail(r, EINVAL, "unknown command"),
        }
    }

    fn write_request(
        &mut self,
        view: &ExportView<'_>,
        export: &Export,
        r: Request,
        in_range: bool,
        payload: &[u8],
    ) -> Result<()> {
        if !export.writable() {
            return self.fail(r, EPERM, "the export is read-only");
        }
        if !in_range {
            return self.fail(r, ENOSPC, "write past the end of the export");
        }
        let fua = r.flags & CMD_FLAG_FUA != 0;
        match view.write(r.offset, payload).and_then(|()| if fua { view.flush() } else { Ok(()) }) {
            Ok(()) => self.ok(r),
            Err(e) => self.fail(r, EIO, &e.to_string()),
        }
    }

    fn ok(&mut self, r: Request) -> Result<()> {
        if self.structured {
            self.stream.write_all(&chunk_header(REPLY_FLAG_DONE, REPLY_TYPE_NONE, r.cookie, 0))?;
        } else {
            self.stream.write_all(&simple_reply(0, r.cookie))?;
        }
        Ok(())
    }

    fn fail(&mut self, r: Request, error: u32, message: &str) -> Result<()> {
        if self.structured {
            let message = &message.as_bytes()[..message.len().min(4096)];
            let mut payload = error.to_be_bytes().to_vec();
            payload.extend_from_slice(&(message.len() as u16).to_be_bytes());
            payload.extend_from_slice(message);
            self.stream.write_all(&chunk_header(REPLY_FLAG_DONE, REPLY_TYPE_ERROR, r.cookie, payload.len() as u32))?;
            self.stream.write_all(&payload)?;
        } else {
            self.stream.write_all(&simple_reply(error, r.cookie))?;
        }
        Ok(())
    }

    /// A simple reply carries its error before the data: the first piece
    /// is read before the header goes out; a later failure can only close
    /// the connection (as the protocol says).
    fn read_simple(&mut self, view: &ExportView<'_>, r: Request) -> Result<()> {
        let mut pos = r.offset;
        let end = r.offset + u64::from(r.length);
        let mut piece = vec![0u8; PIECE.min(r.length as usize)];
        let mut first = true;
        while pos < end {
            let n = ((end - pos) as usize).min(PIECE);
            match view.read(&mut piece[..n], pos) {
                Ok(()) => {}
                Err(e) if first => return self.fail(r, EIO, &e.to_string()),
                Err(e) => return Err(End::Protocol(format!("read failed after its reply began: {e}"))),
            }
            if first {
                self.stream.write_all(&simple_reply(0, r.cookie))?;
                first = false;
            }
            self.stream.write_all(&piece[..n])?;
            pos += n as u64;
        }
        Ok(())
    }

    /// Data as `OFFSET_DATA` chunks and holes as `OFFSET_HOLE` (so a client
    /// copies a sparse disk without moving its zeros); one data chunk for
    /// the whole range when the client says don't fragment.
    fn read_structured(&mut self, view: &ExportView<'_>, r: Request) -> Result<()> {
        let end = r.offset + u64::from(r.length);
        let parts: Vec<(u64, u64, bool)> = if r.flags & CMD_FLAG_DF != 0 {
            vec![(r.offset, u64::from(r.length), true)]
        } else {
            match view.extents(r.offset..end) {
                Ok(e) => e,
                Err(e) => return self.fail(r, EIO, &e.to_string()),
            }
        };
        let mut piece = vec![0u8; PIECE.min(r.length as usize)];
        for (i, &(offset, length, data)) in parts.iter().enumerate() {
            let last = i + 1 == parts.len();
            let flags = if last { REPLY_FLAG_DONE } else { 0 };
            if !data {
                let mut payload = [0u8; 12];
                payload[..8].copy_from_slice(&offset.to_be_bytes());
                payload[8..].copy_from_slice(&(length as u32).to_be_bytes());
                self.stream.write_all(&chunk_header(flags, REPLY_TYPE_OFFSET_HOLE, r.cookie, 12))?;
                self.stream.write_all(&payload)?;
                continue;
            }
            if r.flags & CMD_FLAG_DF != 0 {
                // One chunk: its header promises every byte, so each piece
                // is read before any of it is sent... and a failure after
                // the header can only close the connection.
                let mut pos = offset;
                let stop = offset + length;
                let mut started = false;
                while pos < stop {
                    let n = ((stop - pos) as usize).min(PIECE);
                    if let Err(e) = view.read(&mut piece[..n], pos) {
                        if !started {
                            return self.fail(r, EIO, &e.to_string());
                        }
                        return Err(End::Protocol(format!("read failed inside a chunk: {e}")));
                    }
                    if !started {
                        self.stream.write_all(&chunk_header(
                            flags,
                            REPLY_TYPE_OFFSET_DATA,
                            r.cookie,
                            length as u32 + 8,
                        ))?;
                        self.stream.write_all(&offset.to_be_bytes())?;
                        started = true;
                    }
                    self.stream.write_all(&piece[..n])?;
                    pos += n as u64;
                }
                continue;
            }
            let mut pos = offset;
            let stop = offset + length;
            while pos < stop {
                let n = ((stop - pos) as usize).min(PIECE);
                if let Err(e) = view.read(&mut piece[..n], pos) {
                    return self.fail(r, EIO, &e.to_string());
                }
                let done = last && pos + n as u64 == stop;
                let f = if done { REPLY_FLAG_DONE } else { 0 };
                self.stream.write_all(&chunk_header(f, REPLY_TYPE_OFFSET_DATA, r.cookie, n as u32 + 8))?;
                self.stream.write_all(&pos.to_be_bytes())?;
                self.stream.write_all(&piece[..n])?;
                pos += n as u64;
            }
        }
        Ok(())
    }

    fn block_status(&mut self, view: &ExportView<'_>, r: Request) -> Result<()> {
        let end = r.offset + u64::from(r.length);
        let parts = match view.status(r.offset..end) {
            Ok(p) => p,
            Err(e) => return self.fail(r, EIO, &e.to_string()),
        };
        let max = if r.flags & CMD_FLAG_REQ_ONE != 0 { 1 } else { MAX_DESCRIPTORS };
        let mut payload = 1u32.to_be_bytes().to_vec();
        for (length, flags) in parts.into_iter().take(max) {
            payload.extend_from_slice(&(length as u32).to_be_bytes());
            payload.extend_from_slice(&flags.to_be_bytes());
        }
        self.stream.write_all(&chunk_header(
            REPLY_FLAG_DONE,
            REPLY_TYPE_BLOCK_STATUS,
            r.cookie,
            payload.len() as u32,
        ))?;
        self.stream.write_all(&payload)?;
        Ok(())
    }
}

/// `(offset, length, is data)` runs of `range` from a disk's extents: the
/// parts of a structured read.
pub(crate) fn read_parts(extents: &[crate::disk::Extent], range: std::ops::Range<u64>) -> Vec<(u64, u64, bool)> {
    let mut out: Vec<(u64, u64, bool)> = Vec::new();
    let mut pos = range.start;
    for e in extents {
        let start = e.offset.max(pos);
        let stop = (e.offset + e.length).min(range.end);
        if start >= stop {
            continue;
        }
        if start > pos {
            out.push((pos, start - pos, false));
        }
        let data = e.state == ExtentState::Data;
        match out.last_mut() {
            Some(last) if last.2 == data && last.0 + last.1 == start => last.1 += stop - start,
            _ => out.push((start, stop - start, data)),
        }
        pos = stop;
    }
    if pos < range.end {
        match out.last_mut() {
            Some(last) if !last.2 => last.1 += range.end - pos,
            _ => out.push((pos, range.end - pos, false)),
        }
    }
    out
}

/// `(length, base:allocation flags)` descriptors of `range`.
pub(crate) fn status_parts(extents: &[crate::disk::Extent], range: std::ops::Range<u64>) -> Vec<(u64, u32)> {
    read_parts(extents, range)
        .into_iter()
        .map(|(_, length, data)| (length, if data { 0 } else { STATE_HOLE | STATE_ZERO }))
        .collect()
}
