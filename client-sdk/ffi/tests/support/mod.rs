//! Building the shared library and generating bindings from it.

use std::path::{Path, PathBuf};

use anyhow::bail;
use tokio::process::Command;

/// Builds the shared library the bindings load and returns its path.
pub async fn build_library() -> anyhow::Result<PathBuf> {
    // `target/debug`, where cargo put the bindgen binary and the library.
    let target = Path::new(env!("CARGO_BIN_EXE_uniffi-bindgen"))
        .parent()
        .expect("the binary is in the target directory");
    let library = target.join(format!(
        "{}doorstep_ffi{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    ));
    // `cargo test` builds this crate as an rlib only; the shared library the
    // bindings load comes from a build of the lib target (a no-op when fresh,
    // and never stale: the bindings check the library's API checksums).
    let status = Command::new(env!("CARGO"))
        .args(["build", "-p", "doorstep-ffi", "--lib"])
        .status()
        .await?;
    if !status.success() || !library.exists() {
        bail!("could not build {}", library.display());
    }
    Ok(library)
}

/// Runs the bundled `uniffi-bindgen` for one language into `out`.
pub async fn generate(library: &Path, language: &str, out: &Path) -> anyhow::Result<()> {
    let status = Command::new(env!("CARGO_BIN_EXE_uniffi-bindgen"))
        .args(["generate", "--no-format", "--library"])
        .arg(library)
        .args(["--language", language, "--out-dir"])
        .arg(out)
        .status()
        .await?;
    if !status.success() {
        bail!("uniffi-bindgen failed for {language}");
    }
    Ok(())
}
