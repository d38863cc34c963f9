//! `tests/store_s3.rs` and `tests/store_garage.rs` compile to nothing without
//! the `s3` feature. Where S3 is required (`VHDKIT_REQUIRE_S3=1`, as in CI),
//! such a build fails here instead of passing them as zero tests.

#[test]
fn the_s3_suites_exist_where_s3_is_required() {
    let required = std::env::var("VHDKIT_REQUIRE_S3").as_deref() == Ok("1");
    assert!(
        !required || cfg!(feature = "s3"),
        "VHDKIT_REQUIRE_S3=1, but these tests were built without the s3 feature: store_s3 and store_garage ran nothing"
    );
}
