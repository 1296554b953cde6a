//! Packs the source the agent is built from on a SkyPilot node (`agent_install: source`) into
//! `OUT_DIR/agent-source.tar.gz`, which the coordinator embeds: a node builds the very agent
//! this coordinator was built with, whatever the laptop runs. The archive is deterministic
//! (sorted paths, no times, no owners), so its SHA-256 names the source and keys the build
//! cache on a cluster.
//!
//! It holds what `cargo build --release --locked -p agent` needs: the workspace manifest and
//! lock file, the root crate's build script, the trace sample the agent builds in, and the
//! Rust, proto and manifest files of the library, the agent and the coordinator (the
//! coordinator's so that the workspace loads).

use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Files outside the source folders, from the workspace root: the manifest, the lock file, the
/// root build script, and the trace sample `agent bench` has built in (`include_str!`).
const ROOT_FILES: &[&str] = &[
    "Cargo.toml",
    "Cargo.lock",
    "build.rs",
    "configs/traces/burstgpt-sample.csv",
];
/// Folders walked for source files.
const SOURCE_DIRS: &[&str] = &["src", "proto", "agent", "coordinator"];
/// What a source file ends in.
const SOURCE_EXTENSIONS: &[&str] = &["rs", "proto", "toml", "sh"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let root = manifest_dir
        .parent()
        .ok_or("the coordinator crate has no parent folder")?
        .to_path_buf();
    let mut files: Vec<PathBuf> = ROOT_FILES.iter().map(PathBuf::from).collect();
    for dir in SOURCE_DIRS {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
        walk(&root, Path::new(dir), &mut files)?;
    }
    for file in ROOT_FILES {
        println!("cargo:rerun-if-changed={}", root.join(file).display());
    }
    files.sort();
    files.dedup();

    let mut archive = tar::Builder::new(Vec::new());
    archive.mode(tar::HeaderMode::Deterministic);
    for file in &files {
        let bytes = std::fs::read(root.join(file))?;
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        header.set_cksum();
        archive.append_data(&mut header, file, bytes.as_slice())?;
    }
    let tar_bytes = archive.into_inner()?;
    let mut gz = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::best());
    gz.write_all(&tar_bytes)?;
    let gz_bytes = gz.finish()?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?).join("agent-source.tar.gz");
    std::fs::write(&out, &gz_bytes)?;
    println!(
        "cargo:rustc-env=MULTITENANT_AGENT_SOURCE_SHA256={}",
        hex::encode(Sha256::digest(&gz_bytes))
    );
    println!(
        "cargo:rustc-env=MULTITENANT_AGENT_SOURCE_FILES={}",
        files.len()
    );
    Ok(())
}

/// Adds the source files under `root/dir` (relative paths) to `files`, skipping build output
/// and hidden folders.
fn walk(root: &Path, dir: &Path, files: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(root.join(dir))? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || name == "target" {
            continue;
        }
        let relative = dir.join(&*name);
        let kind = entry.file_type()?;
        if kind.is_dir() {
            walk(root, &relative, files)?;
        } else if kind.is_file()
            && relative
                .extension()
                .is_some_and(|e| SOURCE_EXTENSIONS.contains(&&*e.to_string_lossy()))
        {
            files.push(relative);
        }
    }
    Ok(())
}
