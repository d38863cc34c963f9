//! include/vhdkit.h is what cbindgen makes of src/capi now: a change to the
//! ABI's source that was not carried into the committed header fails here.
//! Without cbindgen (`cargo install cbindgen --locked`) the test says
//! SKIPPED, unless `VHDKIT_REQUIRE_CAPI=1` (CI).

use std::path::Path;
use std::process::Command;

#[test]
fn committed_header_is_what_cbindgen_generates() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let fresh = dir.path().join("vhdkit.h");
    let made = Command::new("cbindgen")
        .current_dir(root)
        .args(["--config", "cbindgen.toml", "--quiet", "--output"])
        .arg(&fresh)
        .arg("src/capi/mod.rs")
        .output();
    let out = match made {
        Ok(out) => out,
        Err(e) => {
            assert!(
                std::env::var("VHDKIT_REQUIRE_CAPI").as_deref() != Ok("1"),
                "VHDKIT_REQUIRE_CAPI=1 but cbindgen: {e}"
            );
            eprintln!("SKIPPED: cbindgen not found ({e}); cargo install cbindgen --locked");
            return;
        }
    };
    assert!(out.status.success(), "cbindgen failed: {}", String::from_utf8_lossy(&out.stderr));
    let committed = std::fs::read_to_string(root.join("include/vhdkit.h")).unwrap();
    let generated = std::fs::read_to_string(&fresh).unwrap();
    if committed != generated {
        let line = committed.lines().zip(generated.lines()).position(|(a, b)| a != b).unwrap_or(0) + 1;
        panic!("include/vhdkit.h differs from cbindgen's output from line {line}: run scripts/capi-header.sh");
    }
    // The header is the whole ABI: every exported function is in it.
    for f in ["vhdkit_abi_version", "vhdkit_store_backup", "vhdkit_reader_read_at", "vhdkit_nbd_server_serve"] {
        assert!(committed.contains(&format!("{f}(")), "{f} is missing from the header");
    }
}
