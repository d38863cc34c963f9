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
