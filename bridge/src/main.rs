//! The `meshgate` binary: parses the command line and hands over to [`bridge::cli`].
use clap::Parser;

fn main() {
    let cli = bridge::cli::Cli::parse();
    bridge::init_logging(cli.is_serve());
    std::process::exit(bridge::cli::run(cli));
}
