//! `doorstep`: hands the command line to the library.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    doorstep_server::cli::main().await
}
