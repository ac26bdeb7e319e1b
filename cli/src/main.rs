use clap::Parser;

fn main() {
    // One TLS provider for the whole process: ring.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = shoal::commands::Cli::parse();
    let code = shoal::commands::run(cli);
    std::process::exit(code);
}
