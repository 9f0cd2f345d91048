//! Links the unwinder statically on glibc Linux (libgcc_eh, as
//! `gcc -static-libgcc` does) instead of loading libgcc_s.so.1 at every
//! start. Both binaries are started often (`supctl` once a command, and a
//! monitoring loop runs `supctl status` again and again): loading one
//! shared library fewer, and skipping its constructor (which asks the CPU
//! what it supports, dear in a VM), takes 0.1 ms off each start of
//! `supctl`, 5 % of a `supctl status` of 500 programs. Panics still unwind:
//! `_Unwind_*` come from the static archive, which the linker sees before
//! the `-lgcc_s` std asks for, so `--as-needed` drops libgcc_s.

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if os == "linux" && env == "gnu" {
        println!("cargo::rustc-link-lib=static:-bundle=gcc_eh");
    }
}
