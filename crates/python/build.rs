//! With the `wheel` feature (set by sdk/python/pyproject.toml when maturin builds the wheel),
//! builds the workspace's binaries too (`herd`, and `herd-stdio` and `herd-chaos`, which ship
//! with it) and puts them where maturin takes the wheel's scripts from, so that one
//! `pip install ./sdk/python` gives both `import herd` (with this module) and the commands. maturin cannot build a binary and an extension in one project
//! (PyO3/maturin#368), but it gathers the `data` directory after compiling the extension, so
//! a build script can fill it.
//!
//! The binaries are built by a nested `cargo build` of the workspace into a target directory of its
//! own (the outer build holds the lock on the workspace's), with the environment cargo set for
//! this build script removed: it describes this crate's build (its features, profile, flags,
//! jobserver), not the binary's. A plain `cargo build` of the workspace does none of this.

use std::env;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The binaries the wheel installs.
const BINS: [&str; 3] = ["herd", "herd-stdio", "herd-chaos"];
/// Where the nested build puts them, under the workspace's target directory.
const TARGET_SUBDIR: &str = "wheel-herd";
/// Where the binaries go: the `scripts/` of the wheel's data directory (pyproject.toml's
/// `[tool.maturin] data`), which pip installs into the environment's bin directory. The data
/// directory is in the source tree because maturin requires it to exist before anything is
/// built; it holds herd's man page (a symlink) in git, and the binaries (ignored by git) after
/// a wheel build.
const SCRIPTS: &str = "sdk/python/wheel-data/scripts";

fn main() {
    println!("cargo::rerun-if-env-changed=CARGO_FEATURE_WHEEL");
    if env::var_os("CARGO_FEATURE_WHEEL").is_none() {
        return;
    }
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let workspace = manifest
        .parent()
        .and_then(Path::parent)
        .expect("crates/python is two levels below the workspace root")
        .to_path_buf();
    let target = workspace.join("target");
    let scripts = workspace.join(SCRIPTS);
    let built = target.join(TARGET_SUBDIR).join("release");

    // Rebuilt when the workspace's sources change (cargo scans directories recursively), or
    // when a copy is gone.
    for path in ["Cargo.toml", "Cargo.lock", "bin", "crates"] {
        println!("cargo::rerun-if-changed={}", workspace.join(path).display());
    }
    for bin in BINS {
        println!("cargo::rerun-if-changed={}", scripts.join(bin).display());
    }

    let cargo = env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let mut build = Command::new(cargo);
    build
        .current_dir(&workspace)
        .args(["build", "--release", "--locked", "--target-dir"])
        .arg(target.join(TARGET_SUBDIR));
    for bin in BINS {
        build.args(["--bin", bin]);
    }
    for (key, _) in env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        if inherited_by_build_script(key) {
            build.env_remove(key);
        }
    }
    // What the wheel ships: no debug info (built without it, then stripped), as maturin's
    // `strip` did for the binary-only wheel.
    build
        .env("CARGO_PROFILE_RELEASE_DEBUG", "false")
        .env("CARGO_PROFILE_RELEASE_STRIP", "symbols");
    let status = build
        .status()
        .unwrap_or_else(|e| panic!("cannot run cargo to build the herd binaries: {e}"));
    assert!(
        status.success(),
        "building the herd binaries failed ({status})"
    );

    fs::create_dir_all(&scripts)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", scripts.display()));
    // Replaced, not written over: a running copy (a herd started from an earlier install) keeps
    // its own file.
    for bin in BINS {
        let (from, to) = (built.join(bin), scripts.join(bin));
        // Staged beside the build, not in scripts/, which maturin ships whole.
        let staged = target.join(TARGET_SUBDIR).join(format!("{bin}.staged"));
        fs::copy(&from, &staged)
            .and_then(|_| fs::rename(&staged, &to))
            .unwrap_or_else(|e| panic!("cannot copy {} to {}: {e}", from.display(), to.display()));
    }
}

/// Variables cargo (or maturin through it) sets for this build script that would change or
/// break the nested build: its package's CARGO_* (features, manifest, target dir, encoded
/// flags, jobserver), the compiler flags and the build script's own context. RUSTC (the
/// compiler of this build) and RUSTC_WRAPPER stay.
fn inherited_by_build_script(key: &str) -> bool {
    (key.starts_with("CARGO_") && key != "CARGO_HOME")
        || key.starts_with("DEP_")
        || matches!(
            key,
            "RUSTFLAGS"
                | "RUSTDOCFLAGS"
                | "RUSTDOC"
                | "RUSTC_WORKSPACE_WRAPPER"
                | "RUSTC_LINKER"
                | "MAKEFLAGS"
                | "MFLAGS"
                | "OUT_DIR"
                | "TARGET"
                | "HOST"
                | "NUM_JOBS"
                | "OPT_LEVEL"
                | "DEBUG"
                | "PROFILE"
        )
}
