//! `beskar7 bmc probe`: shows an operator what the provider would do with a BMC. Read-only (it
//! creates and deletes a Redfish session where the BMC has sessions, nothing else).

use std::path::PathBuf;
use std::time::Duration;

use beskar7_redfish::{Client, ClientConfig, Credentials, ProbeReport, Tls};

#[derive(clap::Subcommand, Debug)]
pub enum BmcCommand {
    /// Discover a BMC (read-only) and report the system, virtual media slots, boot override and problems.
    Probe(ProbeArgs),
}

#[derive(clap::Args, Debug)]
pub struct ProbeArgs {
    /// BMC address: host, host:port or https://host:port.
    pub address: String,
    /// BMC user name.
    #[arg(long)]
    pub username: String,
    /// File holding the BMC password (a trailing newline is ignored).
    #[arg(long)]
    pub password_file: PathBuf,
    /// ComputerSystem id, required when the BMC manages several systems.
    #[arg(long)]
    pub system_id: Option<String>,
    /// PEM CA bundle to verify the BMC's certificate with (instead of the system roots).
    #[arg(long, conflicts_with = "insecure")]
    pub ca_file: Option<PathBuf>,
    /// Do not verify the BMC's certificate.
    #[arg(long)]
    pub insecure: bool,
    /// Output format.
    #[arg(long, default_value = "text", value_parser = ["json", "text"])]
    pub output: String,
    /// Per-request timeout in seconds.
    #[arg(long, default_value_t = 30)]
    pub timeout: u64,
}

/// Run a `bmc` subcommand; returns the process exit code. Failures print one line to stderr.
pub fn run(command: BmcCommand) -> i32 {
    match command {
        BmcCommand::Probe(args) => match probe(&args) {
            Ok(out) => {
                print!("{out}");
                0
            }
            Err(line) => {
                eprintln!("{line}");
                1
            }
        },
    }
}

/// Probe and render; the error is the one-line reason.
pub fn probe(args: &ProbeArgs) -> Result<String, String> {
    let password = std::fs::read_to_string(&args.password_file)
        .map_err(|e| {
            format!(
                "error: cannot read password file {}: {e}",
                args.password_file.display()
            )
        })?
        .trim_end_matches(['\n', '\r'])
        .to_string();
    let tls = match (&args.ca_file, args.insecure) {
        (Some(f), _) => Tls::CaBundle(
            std::fs::read(f)
                .map_err(|e| format!("error: cannot read CA file {}: {e}", f.display()))?,
        ),
        (None, true) => Tls::Insecure,
        (None, false) => Tls::Verify,
    };
    let mut config = ClientConfig::new(&args.address, Credentials::new(&args.username, password));
    config.tls = tls;
    config.request_timeout = Duration::from_secs(args.timeout.max(1));
    config.connect_timeout = Duration::from_secs(args.timeout.clamp(1, 10));
    config.max_retries = 1;
    config.backoff_base = Duration::from_millis(200);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("error: cannot start the async runtime: {e}"))?;
    let report = runtime.block_on(async {
        let client = Client::new(config).map_err(one_line)?;
        let report = ProbeReport::probe(&client, args.system_id.as_deref()).await;
        // Delete the session whatever happened; a failed logout does not fail the probe.
        let _ = client.logout().await;
        report.map_err(one_line)
    })?;
    Ok(match args.output.as_str() {
        "json" => format!(
            "{}\n",
            serde_json::to_string_pretty(&report).map_err(|e| format!("error: {e}"))?
        ),
        _ => report.to_text(),
    })
}

fn one_line(e: beskar7_redfish::Error) -> String {
    let text = e.to_string().replace(['\n', '\r'], " ");
    format!("error: {}: {text}", e.reason())
}
