//! The `doorstep` binary, built inside the test crate so tests can start it
//! as a separate process (`CARGO_BIN_EXE_doorstep`).

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    doorstep_server::cli::main().await
}
