//! The committed C header must equal a fresh cbindgen generation from the sources, so that
//! CI catches an ABI change whose header was not regenerated. `RINGRUN_BLESS=1` rewrites it.

use std::path::Path;

fn generate() -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).expect("cbindgen.toml");
    // cbindgen follows the `mod` declarations of lib.rs itself: no `cargo metadata` run from
    // inside a test.
    let builder = cbindgen::Builder::new()
        .with_config(config)
        .with_src(dir.join("src/lib.rs"));
    let mut out = Vec::new();
    builder.generate().expect("cbindgen").write(&mut out);
    String::from_utf8(out).unwrap()
}

#[test]
fn committed_header_is_fresh() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("include/ringrun.h");
    let fresh = generate();
    if std::env::var_os("RINGRUN_BLESS").is_some() {
        std::fs::write(&path, &fresh).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == fresh,
        "ffi/include/ringrun.h is stale: run `RINGRUN_BLESS=1 cargo test -p ringrun-ffi --test header`"
    );
}
