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
    /// Run the controllers, the artifact server, probes and metrics.
    Manager {
        #[command(flatten)]
        args: Box<beskar7_controllers::manager::ManagerArgs>,
        /// Log format.
        #[arg(long, env = "BESKAR7_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
        log_format: String,
    },
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
    // Two rustls crypto providers are linked in (kube: ring, reqwest: aws-lc-rs); choose one.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    match cli.command {
        Command::Manager { args, log_format } => {
            beskar7_controllers::telemetry::init(&log_format);
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime.block_on(beskar7_controllers::manager::run(*args))?;
        }
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
