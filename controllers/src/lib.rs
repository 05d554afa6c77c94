//! Beskar7 controllers, artifact server, webhooks and the subcommands of the `beskar7` binary.

pub mod artifacts;
pub mod bmc_probe;
pub mod capi;
pub mod conditions;
pub mod context;
pub mod controllers;
pub mod crds_cmd;
pub mod error;
pub mod leader;
pub mod manager;
pub mod media_cmd;
pub mod metrics;
pub mod telemetry;
mod tls;
pub mod webhooks;
