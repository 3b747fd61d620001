use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = boxoffice::cli::Cli::parse();
    match boxoffice::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("boxoffice: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
