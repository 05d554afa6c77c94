//! Beskar7 controllers, artifact server, webhooks and the subcommands of the `beskar7` binary.

pub mod artifacts;
pub mod bmc_probe;
pub mod crds_cmd;
pub mod media_cmd;
