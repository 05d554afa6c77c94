//! Redfish client for BMCs: lenient models, sessions, discovery, virtual media, boot override and
//! the vendor behaviour of DESIGN.md section 6. No Kubernetes here.
//!
//! ```no_run
//! # async fn f() -> beskar7_redfish::Result<()> {
//! use beskar7_redfish::{Client, ClientConfig, Credentials};
//! let client = Client::new(ClientConfig::new("bmc.example:443", Credentials::new("admin", "pw")))?;
//! let d = client.discover(None).await?;
//! if let Some(slot) = d.boot_slot() {
//!     client.insert_media(&slot.path, "https://artifacts/boot.iso").await?;
//! }
//! client.set_boot_once_cd(&d, Some(beskar7_redfish::BootMode::Uefi)).await?;
//! client.set_power(&d, beskar7_redfish::PowerAction::Restart).await?;
//! client.logout().await?;
//! # Ok(()) }
//! ```

pub mod client;
pub mod error;
pub mod models;
pub mod ops;
pub mod probe;

pub use client::{
    AuthMode, Body, Client, ClientConfig, Credentials, DEFAULT_MAX_BODY_BYTES, Fetched, Recorder,
    RequestRecord, RequestStats, Response, Tls,
};
pub use error::{Error, Result};
pub use ops::{
    BootMode, BootOverridePlan, Discovery, ImageFormat, InsertMethod, Inventory, Outcome,
    PowerAction, Slot, Vendor,
};
pub use probe::ProbeReport;
