use clap::error::ErrorKind;
use clap::Parser;

fn main() {
    // The per-container monitor: before anything starts a thread (it forks), and without
    // clap's parsing of its private arguments.
    let mut args = std::env::args();
    if args.nth(1).as_deref() == Some("shim") {
        std::process::exit(worker::oci::shim::shim_main(args.collect()));
    }
    // One TLS provider for the whole process: ring.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = match shoal::commands::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => match e.kind() {
            ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => e.exit(),
            _ => {
                eprintln!(
                    "{}",
                    shoal::commands::one_line_usage_error(&e.render().to_string())
                );
                std::process::exit(2);
            }
        },
    };
    if !matches!(cli.cmd, shoal::commands::Cmd::Daemon(_)) {
        shoal::output::exit_quietly_on_closed_output();
    }
    let code = shoal::commands::run(cli);
    std::process::exit(code);
}
