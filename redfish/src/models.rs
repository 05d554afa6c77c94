//! Lenient serde models of the Redfish resources the provider reads and writes.
//!
//! Every field is optional and read leniently: a field that is missing, `null` or of an
//! unexpected type becomes `None` instead of failing the whole resource. Enumerations are kept
//! as strings so values this crate does not know (vendor extensions, newer schema versions)
//! survive. Everything not modelled, `Oem` included, is kept in `extra`.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

/// Deserialize a field, turning a value of the wrong shape into `None`.
pub fn lenient<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: DeserializeOwned,
{
    let v = Value::deserialize(d)?;
    Ok(serde_json::from_value(v).ok())
}

/// Parse a resource body leniently: any JSON object parses.
pub fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, serde_json::Error> {
    serde_json::from_slice(body)
}

/// A link: `{"@odata.id": "/redfish/v1/..."}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ODataId {
    #[serde(rename = "@odata.id", default, deserialize_with = "lenient")]
    pub odata_id: Option<String>,
}

impl ODataId {
    pub fn path(&self) -> Option<&str> {
        self.odata_id.as_deref().filter(|s| !s.is_empty())
    }
}

/// Common header of every resource.
macro_rules! resource_struct {
    ($(#[$meta:meta])* $name:ident { $($(#[$fmeta:meta])* $field:ident : $ty:ty),* $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Default, Serialize, Deserialize)]
        pub struct $name {
            #[serde(rename = "@odata.id", default, deserialize_with = "lenient", skip_serializing_if = "Option::is_none")]
            pub odata_id: Option<String>,
            #[serde(rename = "@odata.etag", default, deserialize_with = "lenient", skip_serializing_if = "Option::is_none")]
            pub odata_etag: Option<String>,
            #[serde(rename = "@odata.type", default, deserialize_with = "lenient", skip_serializing_if = "Option::is_none")]
            pub odata_type: Option<String>,
            #[serde(rename = "Id", default, deserialize_with = "lenient", skip_serializing_if = "Option::is_none")]
            pub id: Option<String>,
            #[serde(rename = "Name", default, deserialize_with = "lenient", skip_serializing_if = "Option::is_none")]
            pub name: Option<String>,
            $(
                $(#[$fmeta])*
                #[serde(default, deserialize_with = "lenient", skip_serializing_if = "Option::is_none")]
                pub $field: Option<$ty>,
            )*
            /// Everything not modelled above, `Oem` included.
            #[serde(flatten)]
            pub extra: Map<String, Value>,
        }
    };
}

/// A plain sub-object (no resource header).
macro_rules! object_struct {
    ($(#[$meta:meta])* $name:ident { $($(#[$fmeta:meta])* $field:ident : $ty:ty),* $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Default, Serialize, Deserialize)]
        pub struct $name {
            $(
                $(#[$fmeta])*
                #[serde(default, deserialize_with = "lenient", skip_serializing_if = "Option::is_none")]
                pub $field: Option<$ty>,
            )*
            #[serde(flatten)]
            pub extra: Map<String, Value>,
        }
    };
}

resource_struct!(
    /// `/redfish/v1/`
    ServiceRoot {
        #[serde(rename = "RedfishVersion")]
        redfish_version: String,
        #[serde(rename = "UUID")]
        uuid: String,
        #[serde(rename = "Product")]
        product: String,
        #[serde(rename = "Vendor")]
        vendor: String,
        #[serde(rename = "Systems")]
        systems: ODataId,
        #[serde(rename = "Managers")]
        managers: ODataId,
        #[serde(rename = "SessionService")]
        session_service: ODataId,
        #[serde(rename = "Tasks")]
        tasks: ODataId,
        #[serde(rename = "Links")]
        links: ServiceRootLinks,
    }
);

object_struct!(ServiceRootLinks {
    #[serde(rename = "Sessions")]
    sessions: ODataId,
});

resource_struct!(
    /// Any collection: `Members` links.
    Collection {
        #[serde(rename = "Members")]
        members: Vec<ODataId>,
        #[serde(rename = "Members@odata.count")]
        members_count: u64,
    }
);

impl Collection {
    /// Member paths, empty ones dropped.
    pub fn member_paths(&self) -> Vec<String> {
        self.members
            .iter()
            .flatten()
            .filter_map(|m| m.path().map(str::to_string))
            .collect()
    }
}

object_struct!(Status {
    #[serde(rename = "State")]
    state: String,
    #[serde(rename = "Health")]
    health: String,
});

object_struct!(ProcessorSummary {
    #[serde(rename = "Count")]
    count: u64,
    #[serde(rename = "LogicalProcessorCount")]
    logical_processor_count: u64,
    #[serde(rename = "Model")]
    model: String,
});

object_struct!(MemorySummary {
    #[serde(rename = "TotalSystemMemoryGiB")]
    total_system_memory_gib: f64,
});

object_struct!(
    /// `ComputerSystem.Boot`.
    Boot {
        #[serde(rename = "BootSourceOverrideTarget")]
        target: String,
        #[serde(rename = "BootSourceOverrideTarget@Redfish.AllowableValues")]
        target_allowable_values: Vec<String>,
        #[serde(rename = "BootSourceOverrideEnabled")]
        enabled: String,
        #[serde(rename = "BootSourceOverrideEnabled@Redfish.AllowableValues")]
        enabled_allowable_values: Vec<String>,
        #[serde(rename = "BootSourceOverrideMode")]
        mode: String,
        #[serde(rename = "BootSourceOverrideMode@Redfish.AllowableValues")]
        mode_allowable_values: Vec<String>,
        #[serde(rename = "UefiTargetBootSourceOverride")]
        uefi_target: String,
    }
);

object_struct!(
    /// `@Redfish.Settings`: where pending settings are written.
    Settings {
        #[serde(rename = "SettingsObject")]
        settings_object: ODataId,
        #[serde(rename = "SupportedApplyTimes")]
        supported_apply_times: Vec<String>,
    }
);

object_struct!(
    /// An action: `{"target": ..., "X@Redfish.AllowableValues": [...], "@Redfish.ActionInfo": ...}`.
    Action {
        #[serde(rename = "target")]
        target: String,
        #[serde(rename = "@Redfish.ActionInfo")]
        action_info: String,
        #[serde(rename = "ResetType@Redfish.AllowableValues")]
        reset_type_allowable_values: Vec<String>,
    }
);

object_struct!(ComputerSystemActions {
    #[serde(rename = "#ComputerSystem.Reset")]
    reset: Action,
});

object_struct!(SystemLinks {
    #[serde(rename = "ManagedBy")]
    managed_by: Vec<ODataId>,
    #[serde(rename = "Chassis")]
    chassis: Vec<ODataId>,
});

resource_struct!(
    /// `/redfish/v1/Systems/{id}`
    ComputerSystem {
        #[serde(rename = "Manufacturer")]
        manufacturer: String,
        #[serde(rename = "Model")]
        model: String,
        #[serde(rename = "SerialNumber")]
        serial_number: String,
        #[serde(rename = "UUID")]
        uuid: String,
        #[serde(rename = "PowerState")]
        power_state: String,
        #[serde(rename = "Status")]
        status: Status,
        #[serde(rename = "Boot")]
        boot: Boot,
        #[serde(rename = "ProcessorSummary")]
        processor_summary: ProcessorSummary,
        #[serde(rename = "MemorySummary")]
        memory_summary: MemorySummary,
        #[serde(rename = "EthernetInterfaces")]
        ethernet_interfaces: ODataId,
        #[serde(rename = "VirtualMedia")]
        virtual_media: ODataId,
        #[serde(rename = "Links")]
        links: SystemLinks,
        #[serde(rename = "Actions")]
        actions: ComputerSystemActions,
        #[serde(rename = "@Redfish.Settings")]
        redfish_settings: Settings,
        #[serde(rename = "SecureBoot")]
        secure_boot: ODataId,
    }
);

resource_struct!(
    /// `/redfish/v1/Systems/{id}/SecureBoot` (DSP0268 `SecureBoot`).
    SecureBoot {
        /// Whether Secure Boot is enabled for the next boot.
        #[serde(rename = "SecureBootEnable")]
        secure_boot_enable: bool,
        /// `Enabled`, `Disabled` or `Unknown`: the state of the current boot.
        #[serde(rename = "SecureBootCurrentBoot")]
        secure_boot_current_boot: String,
        /// `SetupMode`, `UserMode`, `AuditMode`, `DeployedMode`.
        #[serde(rename = "SecureBootMode")]
        secure_boot_mode: String,
    }
);

impl SecureBoot {
    /// Whether the next boot verifies signatures: `SecureBootEnable` when given, else the
    /// current boot's state. None when the BMC says neither.
    pub fn enforced(&self) -> Option<bool> {
        self.secure_boot_enable
            .or(match self.secure_boot_current_boot.as_deref() {
                Some("Enabled") => Some(true),
                Some("Disabled") => Some(false),
                _ => None,
            })
    }
}

impl ComputerSystem {
    /// Managers of this system (`Links.ManagedBy`).
    pub fn manager_paths(&self) -> Vec<String> {
        self.links
            .as_ref()
            .and_then(|l| l.managed_by.as_ref())
            .map(|v| {
                v.iter()
                    .filter_map(|m| m.path().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn reset_action(&self) -> Option<&Action> {
        self.actions.as_ref().and_then(|a| a.reset.as_ref())
    }
}

resource_struct!(
    /// The settings resource a `@Redfish.Settings` points to (only `Boot` matters here).
    SettingsResource {
        #[serde(rename = "Boot")]
        boot: Boot,
    }
);

object_struct!(ActionParameter {
    #[serde(rename = "Name")]
    name: String,
    #[serde(rename = "Required")]
    required: bool,
    #[serde(rename = "DataType")]
    data_type: String,
    #[serde(rename = "AllowableValues")]
    allowable_values: Vec<String>,
});

resource_struct!(
    /// `@Redfish.ActionInfo` resource.
    ActionInfo {
        #[serde(rename = "Parameters")]
        parameters: Vec<ActionParameter>,
    }
);

impl ActionInfo {
    pub fn allowable_values(&self, parameter: &str) -> Option<Vec<String>> {
        self.parameters
            .as_ref()?
            .iter()
            .find(|p| p.name.as_deref() == Some(parameter))
            .and_then(|p| p.allowable_values.clone())
    }
}

object_struct!(ManagerLinks {
    #[serde(rename = "ManagerForServers")]
    manager_for_servers: Vec<ODataId>,
});

resource_struct!(
    /// `/redfish/v1/Managers/{id}`
    Manager {
        #[serde(rename = "ManagerType")]
        manager_type: String,
        #[serde(rename = "Manufacturer")]
        manufacturer: String,
        #[serde(rename = "Model")]
        model: String,
        #[serde(rename = "FirmwareVersion")]
        firmware_version: String,
        #[serde(rename = "VirtualMedia")]
        virtual_media: ODataId,
        #[serde(rename = "Links")]
        links: ManagerLinks,
    }
);

object_struct!(VirtualMediaActions {
    #[serde(rename = "#VirtualMedia.InsertMedia")]
    insert_media: Action,
    #[serde(rename = "#VirtualMedia.EjectMedia")]
    eject_media: Action,
});

resource_struct!(
    /// A virtual media slot.
    VirtualMedia {
        #[serde(rename = "MediaTypes")]
        media_types: Vec<String>,
        #[serde(rename = "Image")]
        image: String,
        #[serde(rename = "ImageName")]
        image_name: String,
        #[serde(rename = "Inserted")]
        inserted: bool,
        #[serde(rename = "WriteProtected")]
        write_protected: bool,
        #[serde(rename = "ConnectedVia")]
        connected_via: String,
        #[serde(rename = "TransferProtocolType")]
        transfer_protocol_type: String,
        #[serde(rename = "Actions")]
        actions: VirtualMediaActions,
    }
);

impl VirtualMedia {
    pub fn insert_target(&self) -> Option<&str> {
        self.actions
            .as_ref()?
            .insert_media
            .as_ref()?
            .target
            .as_deref()
            .filter(|t| !t.is_empty())
    }

    pub fn eject_target(&self) -> Option<&str> {
        self.actions
            .as_ref()?
            .eject_media
            .as_ref()?
            .target
            .as_deref()
            .filter(|t| !t.is_empty())
    }

    /// Whether the slot advertises one of these media types (case-insensitive).
    pub fn has_media_type(&self, wanted: &[&str]) -> bool {
        self.media_types
            .iter()
            .flatten()
            .any(|t| wanted.iter().any(|w| t.eq_ignore_ascii_case(w)))
    }

    /// The current image, empty strings treated as none.
    pub fn current_image(&self) -> Option<&str> {
        self.image.as_deref().filter(|s| !s.is_empty())
    }

    /// Whether something is attached (`Inserted`, or an image when `Inserted` is absent).
    pub fn is_inserted(&self) -> bool {
        match self.inserted {
            Some(v) => v,
            None => self.current_image().is_some(),
        }
    }
}

/// Body of `VirtualMedia.InsertMedia` (and of the PATCH fallback). Smallest form: `{"Image": url}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct InsertMediaRequest {
    #[serde(rename = "Image")]
    pub image: String,
    #[serde(rename = "Inserted", skip_serializing_if = "Option::is_none")]
    pub inserted: Option<bool>,
    #[serde(rename = "WriteProtected", skip_serializing_if = "Option::is_none")]
    pub write_protected: Option<bool>,
    #[serde(
        rename = "TransferProtocolType",
        skip_serializing_if = "Option::is_none"
    )]
    pub transfer_protocol_type: Option<String>,
}

/// Body of `VirtualMedia.EjectMedia`: empty.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EjectMediaRequest {}

resource_struct!(SessionService {
    #[serde(rename = "ServiceEnabled")]
    service_enabled: bool,
    #[serde(rename = "SessionTimeout")]
    session_timeout: u64,
    #[serde(rename = "Sessions")]
    sessions: ODataId,
});

resource_struct!(Session {
    #[serde(rename = "UserName")]
    user_name: String,
});

resource_struct!(EthernetInterface {
    #[serde(rename = "MACAddress")]
    mac_address: String,
    #[serde(rename = "PermanentMACAddress")]
    permanent_mac_address: String,
    #[serde(rename = "IPv4Addresses")]
    ipv4_addresses: Vec<IpAddress>,
    #[serde(rename = "IPv6Addresses")]
    ipv6_addresses: Vec<IpAddress>,
    /// `HostInterface` here marks the host's end of the BMC's own link (Redfish Host Interface).
    #[serde(rename = "Links")]
    links: Map<String, Value>,
});

object_struct!(
    /// One entry of an interface's `IPv4Addresses` or `IPv6Addresses`.
    IpAddress {
        #[serde(rename = "Address")]
        address: String,
    }
);

impl EthernetInterface {
    /// The addresses the BMC reports for this interface that reach the host from the network:
    /// none of the Host Interface (the host's end of the BMC's internal link, e.g.
    /// 169.254.x.x), and no link-local or unspecified ones.
    pub fn routable_addresses(&self) -> Vec<std::net::IpAddr> {
        if self
            .links
            .as_ref()
            .is_some_and(|l| l.contains_key("HostInterface"))
        {
            return Vec::new();
        }
        let v4 = self.ipv4_addresses.iter().flatten();
        let v6 = self.ipv6_addresses.iter().flatten();
        v4.chain(v6)
            .filter_map(|a| {
                a.address
                    .as_deref()?
                    .trim()
                    .parse::<std::net::IpAddr>()
                    .ok()
            })
            .filter(|ip| match ip {
                std::net::IpAddr::V4(a) => !(a.is_unspecified() || a.is_link_local()),
                std::net::IpAddr::V6(a) => {
                    !(a.is_unspecified() || a.is_unicast_link_local() || a.is_loopback())
                }
            })
            .collect()
    }
}

object_struct!(
    /// One entry of `@Message.ExtendedInfo` or of a task's `Messages`.
    Message {
        #[serde(rename = "MessageId")]
        message_id: String,
        #[serde(rename = "Message")]
        message: String,
        #[serde(rename = "Severity")]
        severity: String,
        #[serde(rename = "MessageSeverity")]
        message_severity: String,
        #[serde(rename = "Resolution")]
        resolution: String,
        #[serde(rename = "MessageArgs")]
        message_args: Vec<Value>,
        #[serde(rename = "RelatedProperties")]
        related_properties: Vec<String>,
    }
);

resource_struct!(
    /// A task (or what a task monitor returns once done).
    Task {
        #[serde(rename = "TaskState")]
        task_state: String,
        #[serde(rename = "TaskStatus")]
        task_status: String,
        #[serde(rename = "PercentComplete")]
        percent_complete: u64,
        #[serde(rename = "TaskMonitor")]
        task_monitor: String,
        #[serde(rename = "Messages")]
        messages: Vec<Message>,
    }
);

impl Task {
    /// Done one way or another.
    pub fn is_finished(&self) -> bool {
        matches!(
            self.task_state.as_deref(),
            Some("Completed" | "Exception" | "Killed" | "Cancelled" | "Interrupted")
        )
    }

    pub fn is_failed(&self) -> bool {
        matches!(
            self.task_state.as_deref(),
            Some("Exception" | "Killed" | "Cancelled" | "Interrupted")
        ) || matches!(self.task_status.as_deref(), Some("Critical"))
    }
}

object_struct!(ErrorObject {
    #[serde(rename = "code")]
    code: String,
    #[serde(rename = "message")]
    message: String,
    #[serde(rename = "@Message.ExtendedInfo")]
    extended_info: Vec<Message>,
});

object_struct!(
    /// An error response: `{"error": {"code", "message", "@Message.ExtendedInfo": [...]}}`.
    ErrorBody {
        #[serde(rename = "error")]
        error: ErrorObject,
    }
);

impl ErrorBody {
    /// Every message id (`Base.1.8.PropertyMissing` ...), the top-level code included.
    pub fn message_ids(&self) -> Vec<String> {
        let mut ids = Vec::new();
        if let Some(e) = &self.error {
            if let Some(c) = &e.code {
                ids.push(c.clone());
            }
            for m in e.extended_info.iter().flatten() {
                if let Some(id) = &m.message_id {
                    ids.push(id.clone());
                }
            }
        }
        ids
    }

    /// A one-line summary: the extended messages if any, else the top-level message.
    pub fn summary(&self) -> String {
        let Some(e) = &self.error else {
            return String::new();
        };
        let parts: Vec<String> = e
            .extended_info
            .iter()
            .flatten()
            .filter_map(|m| {
                let text = m.message.clone().or_else(|| m.message_id.clone())?;
                Some(match &m.message_id {
                    Some(id) if m.message.is_some() => format!("{text} ({id})"),
                    _ => text,
                })
            })
            .collect();
        if parts.is_empty() {
            e.message
                .clone()
                .or_else(|| e.code.clone())
                .unwrap_or_default()
        } else {
            parts.join("; ")
        }
    }

    /// Whether any text of the error mentions `word` (message ids, messages, related properties).
    pub fn mentions(&self, word: &str) -> bool {
        let word = word.to_ascii_lowercase();
        let Some(e) = &self.error else {
            return false;
        };
        let mut texts: Vec<String> = vec![];
        texts.extend(e.code.clone());
        texts.extend(e.message.clone());
        for m in e.extended_info.iter().flatten() {
            texts.extend(m.message_id.clone());
            texts.extend(m.message.clone());
            texts.extend(m.related_properties.iter().flatten().cloned());
            for a in m.message_args.iter().flatten() {
                if let Some(s) = a.as_str() {
                    texts.push(s.to_string());
                }
            }
        }
        texts.iter().any(|t| t.to_ascii_lowercase().contains(&word))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrong_types_and_unknown_fields_do_not_fail() {
        let body = br##"{
            "@odata.id": "/redfish/v1/Systems/1",
            "@odata.etag": "W/\"1\"",
            "Id": 1,
            "PowerState": "SomethingNew",
            "MemorySummary": {"TotalSystemMemoryGiB": "lots"},
            "ProcessorSummary": {"Count": 2},
            "Boot": {"BootSourceOverrideTarget@Redfish.AllowableValues": ["Cd", "VendorThing"]},
            "Actions": {"Oem": {}, "#ComputerSystem.Reset": {"target": "/x", "@Redfish.ActionInfo": "/y"}},
            "Oem": {"Vendor": {"a": 1}},
            "Links": {"ManagedBy": [{"@odata.id": "/redfish/v1/Managers/1"}]}
        }"##;
        let s: ComputerSystem = parse(body).unwrap();
        assert_eq!(s.odata_etag.as_deref(), Some("W/\"1\""));
        assert_eq!(
            s.id, None,
            "a number where a string is expected becomes None"
        );
        assert_eq!(s.power_state.as_deref(), Some("SomethingNew"));
        assert_eq!(
            s.memory_summary.as_ref().unwrap().total_system_memory_gib,
            None
        );
        assert_eq!(s.processor_summary.as_ref().unwrap().count, Some(2));
        assert_eq!(
            s.boot.as_ref().unwrap().target_allowable_values.as_deref(),
            Some(&["Cd".to_string(), "VendorThing".to_string()][..])
        );
        assert_eq!(s.reset_action().unwrap().action_info.as_deref(), Some("/y"));
        assert!(s.extra.contains_key("Oem"));
        assert_eq!(
            s.manager_paths(),
            vec!["/redfish/v1/Managers/1".to_string()]
        );
    }

    #[test]
    fn error_body_summary_and_ids() {
        let body = br#"{"error":{"code":"iLO.0.10.ExtendedInfo","message":"See @Message.ExtendedInfo",
            "@Message.ExtendedInfo":[{"MessageId":"iLO.2.14.UnableToModifyDuringSystemPOST","Message":"busy"}]}}"#;
        let e: ErrorBody = parse(body).unwrap();
        assert!(
            e.message_ids()
                .iter()
                .any(|i| i.ends_with("UnableToModifyDuringSystemPOST"))
        );
        assert_eq!(
            e.summary(),
            "busy (iLO.2.14.UnableToModifyDuringSystemPOST)"
        );
        assert!(e.mentions("unabletomodify"));
    }

    #[test]
    fn insert_body_is_smallest_by_default() {
        let b = InsertMediaRequest {
            image: "http://x/y.iso".into(),
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_string(&b).unwrap(),
            r#"{"Image":"http://x/y.iso"}"#
        );
    }
}
