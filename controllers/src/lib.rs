//! Beskar7 controllers, artifact server, webhooks and the subcommands of the `beskar7` binary.

pub mod crds_cmd;
