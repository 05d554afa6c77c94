//! The `beskar7` binary: the manager and the operator's tools.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "beskar7",
    version,
    about = "Cluster API infrastructure provider for immutable bare metal over Redfish"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print all CustomResourceDefinitions as YAML, or write one file per CRD.
    Crds {
        /// Write `<group>_<plural>.yaml` files into this directory instead of printing.
        #[arg(long)]
        out_dir: Option<PathBuf>,
    },
    /// Talk to a BMC the way the provider would (read-only).
    Bmc {
        #[command(subcommand)]
        command: beskar7_controllers::bmc_probe::BmcCommand,
    },
    /// Build config volumes and patch ISOs by hand (what the provider serves to machines).
    Media {
        #[command(subcommand)]
        command: beskar7_controllers::media_cmd::MediaCommand,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Crds { out_dir } => match out_dir {
            Some(dir) => beskar7_controllers::crds_cmd::write_crds(&dir)?,
            None => print!("{}", beskar7_controllers::crds_cmd::print_crds()?),
        },
        Command::Bmc { command } => {
            let code = beskar7_controllers::bmc_probe::run(command);
            if code != 0 {
                std::process::exit(code);
            }
        }
        Command::Media { command } => beskar7_controllers::media_cmd::run(command)?,
    }
    Ok(())
}
