//! Gives the shared library the SONAME it is installed under (`libshmex.so`, see
//! `scripts/build.sh`), so that programs linked with `-lshmex` record that name.

fn main() {
    let target_os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if target_os == "linux" {
        println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libshmex.so");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
