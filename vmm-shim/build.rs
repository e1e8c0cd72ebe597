//! Builds the test guest (`guest/`, its own Cargo package) for the host
//! target with its linker script and freestanding flags, and leaves the ELF
//! at `$OUT_DIR/wanmig-guest.elf` for `include_bytes!`. The nested cargo
//! uses its own target dir under OUT_DIR so it never waits on the outer
//! build's lock.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest_dir = PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"),
    );
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let guest_dir = manifest_dir.join("guest");
    let abi_dir = manifest_dir.join("guest-abi");
    for p in ["src", "Cargo.toml", "Cargo.lock", "linker.ld"] {
        println!("cargo:rerun-if-changed={}", guest_dir.join(p).display());
    }
    for p in ["src", "Cargo.toml"] {
        println!("cargo:rerun-if-changed={}", abi_dir.join(p).display());
    }

    let target = "x86_64-unknown-linux-gnu";
    let target_dir = out_dir.join("guest-target");
    let linker_script = guest_dir.join("linker.ld");
    let flags = [
        format!("-Clink-arg=-T{}", linker_script.display()),
        "-Clink-arg=-nostartfiles".into(),
        "-Clink-arg=-static".into(),
        "-Clink-arg=-Wl,-z,norelro".into(),
        "-Crelocation-model=static".into(),
        "-Ctarget-feature=+crt-static".into(),
    ]
    .join("\x1f");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(&guest_dir)
        .args(["build", "--release", "--target", target, "--target-dir"])
        .arg(&target_dir)
        .env("CARGO_ENCODED_RUSTFLAGS", flags)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("CARGO_PROFILE_RELEASE_LTO")
        .status()
        .expect("cannot run cargo to build the test guest");
    if !status.success() {
        panic!(
            "building the test guest (vmm-shim/guest) failed: {status}; see the cargo output above"
        );
    }
    let elf = target_dir.join(target).join("release").join("wanmig-guest");
    std::fs::copy(&elf, out_dir.join("wanmig-guest.elf"))
        .unwrap_or_else(|e| panic!("cannot copy the guest ELF {}: {e}", elf.display()));
}
