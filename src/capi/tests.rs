//! The boundary's own guarantees, checked from Rust: panics caught,
//! handles checked, errors carrying their kind and OS code.

use std::ffi::CStr;

use super::disk::{vhdkit_disk, vhdkit_disk_open, vhdkit_disk_size};
use super::error::*;
use super::handles::Table;

fn message(err: *const vhdkit_error) -> String {
    // SAFETY: an error vhdkit returned, not yet freed.
    unsafe { CStr::from_ptr(vhdkit_error_message(err)) }.to_string_lossy().into_owned()
}

#[test]
fn a_panic_becomes_an_error_of_its_own_kind() {
    let mut err = std::ptr::null_mut();
    let status = call(&mut err, || panic!("deliberately, at {}", 42));
    assert_eq!(status, VHDKIT_PANIC);
    assert!(!err.is_null());
    // SAFETY: as above.
    assert_eq!(unsafe { vhdkit_error_status(err) }, VHDKIT_PANIC);
    assert!(message(err).contains("deliberately, at 42"), "{}", message(err));
    // SAFETY: freed once.
    unsafe { vhdkit_error_free(err) };
    // Without an error object the status still says it.
    assert_eq!(call(std::ptr::null_mut(), || panic!("again")), VHDKIT_PANIC);
}

#[test]
fn success_clears_the_error_pointer() {
    let mut err = std::ptr::dangling_mut::<vhdkit_error>();
    assert_eq!(call(&mut err, || Ok(())), VHDKIT_OK);
    assert!(err.is_null());
}

#[test]
fn handles_are_checked_and_never_reused() {
    struct A;
    struct B;
    let a: Table<u32> = Table::new("a");
    let b: Table<u32> = Table::new("b");
    let h1: *mut A = a.insert(1);
    let h2: *mut A = a.insert(2);
    assert_ne!(h1, h2);
    assert_eq!(*a.get(h1).unwrap(), 1);
    assert!(b.get(h1.cast::<B>()).is_err(), "another kind's table does not know it");
    assert!(a.remove(h1));
    assert!(!a.remove(h1), "a second free is refused");
    let e = a.get(h1).unwrap_err();
    assert_eq!(e.status, VHDKIT_INVALID_ARGUMENT);
    assert!(e.message.contains("not a live a handle"), "{}", e.message);
    let h3: *mut A = a.insert(3);
    assert_ne!(h3, h1, "a freed token is not given out again");
    assert!(a.get(std::ptr::null::<A>()).is_err());
}

#[test]
fn a_missing_file_is_not_found_with_its_os_code() {
    let mut disk: *mut vhdkit_disk = std::ptr::null_mut();
    let mut err = std::ptr::null_mut();
    // SAFETY: valid pointers and a NUL-terminated path.
    let status =
        unsafe { vhdkit_disk_open(c"/nonexistent/vhdkit/x.vhdx".as_ptr(), std::ptr::null(), &mut disk, &mut err) };
    assert_eq!(status, VHDKIT_NOT_FOUND, "{}", message(err));
    assert!(disk.is_null(), "out is untouched on failure");
    // ENOENT; on Windows ERROR_PATH_NOT_FOUND, the folder being missing.
    let want = if cfg!(windows) { 3 } else { 2 };
    // SAFETY: as above.
    assert_eq!(unsafe { vhdkit_error_os_code(err) }, want);
    assert!(message(err).contains("/nonexistent/vhdkit/x.vhdx"), "{}", message(err));
    // SAFETY: freed once.
    unsafe { vhdkit_error_free(err) };
    let mut size = 0u64;
    // SAFETY: a dangling token is what is being tested; it is not dereferenced.
    let status = unsafe { vhdkit_disk_size(0xdead_0000 as *const vhdkit_disk, &mut size, std::ptr::null_mut()) };
    assert_eq!(status, VHDKIT_INVALID_ARGUMENT);
}

#[test]
fn status_names_are_distinct() {
    let names: std::collections::BTreeSet<String> = (0..=12)
        .map(|s| {
            // SAFETY: static strings.
            unsafe { CStr::from_ptr(vhdkit_status_name(s)) }.to_string_lossy().into_owned()
        })
        .collect();
    assert_eq!(names.len(), 13);
    assert!(!names.contains("VHDKIT_UNKNOWN"));
}

#[test]
fn a_reader_served_over_nbd_answers_and_stops_when_cancelled() {
    use std::io::Read;

    use super::callbacks::{vhdkit_cancel, vhdkit_cancel_free, vhdkit_cancel_new, vhdkit_cancel_trip};
    use super::nbd::vhdkit_nbd_server_serve;
    use super::nbd::{vhdkit_nbd_server, vhdkit_nbd_server_bind, vhdkit_nbd_server_free, vhdkit_nbd_server_new};
    use super::restore::{vhdkit_reader, vhdkit_reader_free, vhdkit_reader_open};
    use super::store::{vhdkit_store, vhdkit_store_free, vhdkit_store_open};

    // A store holding one backup of 4 MiB, made through the Rust API.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    let store = crate::store::Store::init(&path, &Default::default()).unwrap();
    let bytes: Vec<u8> = (0..4u32 << 20).map(|i| (i % 251) as u8).collect();
    let disk = crate::disk::OpenOptions::new().open_raw_reader(Box::new(std::sync::Arc::new(bytes)), "mem");
    store.backup(&disk, &crate::store::BackupOptions::new("vm")).unwrap();
    drop(store);

    let location = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    let (mut s, mut r): (*mut vhdkit_store, *mut vhdkit_reader) = (std::ptr::null_mut(), std::ptr::null_mut());
    let mut server: *mut vhdkit_nbd_server = std::ptr::null_mut();
    let mut cancel: *mut vhdkit_cancel = std::ptr::null_mut();
    let mut url: *mut std::ffi::c_char = std::ptr::null_mut();
    let null = std::ptr::null_mut();
    // SAFETY: valid pointers throughout; every handle is freed below.
    unsafe {
        assert_eq!(vhdkit_store_open(location.as_ptr(), std::ptr::null(), &mut s, null), VHDKIT_OK);
        assert_eq!(vhdkit_reader_open(s, c"vm".as_ptr(), std::ptr::null(), &mut r, null), VHDKIT_OK);
        let readers = [r.cast_const()];
        let names = [c"vm".as_ptr()];
        assert_eq!(
            vhdkit_nbd_server_new(readers.as_ptr(), names.as_ptr(), 1, std::ptr::null(), &mut server, null),
            VHDKIT_OK
        );
        assert_eq!(vhdkit_cancel_new(&mut cancel, null), VHDKIT_OK);
        // Serving before binding is a caller's mistake, not a hang.
        let mut err = std::ptr::null_mut();
        assert_eq!(vhdkit_nbd_server_serve(server, cancel, &mut err), VHDKIT_INVALID_ARGUMENT);
        assert!(message(err).contains("not bound"), "{}", message(err));
        vhdkit_error_free(err);
        assert_eq!(vhdkit_nbd_server_bind(server, c"127.0.0.1:0".as_ptr(), &mut url, null), VHDKIT_OK);
    }
    // SAFETY: a string vhdkit returned.
    let url_text = unsafe { CStr::from_ptr(url) }.to_str().unwrap().to_string();
    // SAFETY: freed once.
    unsafe { super::args::vhdkit_string_free(url) };
    let addr = url_text.strip_prefix("nbd://").unwrap().to_string();
    assert!(addr.starts_with("127.0.0.1:"), "{url_text}");
    let (server_token, cancel_token) = (server as usize, cancel as usize);
    let serving = std::thread::spawn(move || {
        // SAFETY: live handles, passed as the tokens they are.
        unsafe { vhdkit_nbd_server_serve(server_token as *const _, cancel_token as *const _, std::ptr::null_mut()) }
    });
    // The newstyle greeting: "NBDMAGIC" then "IHAVEOPT".
    let mut greeting = [0u8; 16];
    let mut client = std::net::TcpStream::connect(&addr).unwrap();
    client.read_exact(&mut greeting).unwrap();
    assert_eq!(&greeting, b"NBDMAGICIHAVEOPT");
    drop(client);
    // SAFETY: a live cancel handle.
    assert_eq!(unsafe { vhdkit_cancel_trip(cancel, null) }, VHDKIT_OK);
    assert_eq!(serving.join().unwrap(), VHDKIT_OK);
    vhdkit_nbd_server_free(server);
    vhdkit_cancel_free(cancel);
    vhdkit_reader_free(r);
    vhdkit_store_free(s);
}
