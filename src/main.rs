use clap::Parser;

/// mimalloc: glibc's allocator cost about a sixth of a node's CPU under
/// load (see docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    boxoffice::store::sqlite::configure_process();
    let cli = boxoffice::cli::Cli::parse();
    match boxoffice::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("boxoffice: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
