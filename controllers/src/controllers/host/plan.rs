//! The PhysicalHost lifecycle as one pure function: what was observed in, the steps to take,
//! the next state and the Ready condition out. No I/O, no client, no clock: the observation
//! carries everything, so every combination is a table row in the tests below.
//!
//! States (DESIGN.md section 4): Enrolling -> Available -> Claimed -> Provisioning ->
//! Provisioned -> Deprovisioning -> Available; Error from anywhere (set by the reconcile shell
//! when observing or executing fails), left on the next pass that succeeds.

use beskar7_api::{BootMode, HostState, RebootPhase};

/// Power as the BMC reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Power {
    On,
    Off,
    /// `PoweringOn`, `PoweringOff`: the BMC is carrying out a change.
    Transitioning(String),
    /// Anything else, or nothing.
    Unknown(String),
}

impl Power {
    pub fn from_redfish(s: Option<&str>) -> Self {
        match s {
            Some("On") => Self::On,
            Some("Off") => Self::Off,
            Some(t @ ("PoweringOn" | "PoweringOff")) => Self::Transitioning(t.to_string()),
            other => Self::Unknown(other.unwrap_or_default().to_string()),
        }
    }
}

/// A power change the provider asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PowerChange {
    On,
    /// Graceful shutdown: the OS gets the ACPI power button (a requested reboot's first step).
    GracefulOff,
    ForceOff,
}

impl PowerChange {
    /// The value persisted in `status.lastPowerRequest.action`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::On => "On",
            Self::GracefulOff => "GracefulOff",
            Self::ForceOff => "ForceOff",
        }
    }

    pub fn from_persisted(s: &str) -> Option<Self> {
        match s {
            "On" => Some(Self::On),
            "GracefulOff" => Some(Self::GracefulOff),
            "ForceOff" => Some(Self::ForceOff),
            _ => None,
        }
    }
}

/// The provisioning lock annotation as seen by this manager.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lock {
    /// No lock annotation.
    Free,
    /// Held by this manager.
    Ours,
    /// Held by another manager that renewed it recently.
    OtherLive,
    /// Left by a manager that stopped renewing it.
    Expired,
}

/// What a virtual media slot holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotState {
    pub path: String,
    /// The image inserted (or an "inserted" flag without a URL: `Some("")`).
    pub image: Option<String>,
}

/// The claim on the host (`spec.consumerRef` + `spec.provisioning`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    /// `<namespace>/<name>` of the consumer: the identity of one claim.
    pub key: String,
    pub boot_mode: BootMode,
}

/// The media of the current claim, prepared (rendered, registered, fetched and patched).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Media {
    pub boot_slot: String,
    pub boot_url: String,
    /// Slot and URL of the config volume, when the claim uses one.
    pub config: Option<(String, String)>,
    /// The UEFI boot path carries the arguments only with Secure Boot off.
    pub needs_secure_boot_off: bool,
}

/// A reboot asked with the annotation ([`beskar7_api::REBOOT_ANNOTATION`]), as one pass sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RebootObservation {
    /// The annotation's value: the request.
    pub request: String,
    /// How far `status.reboot` says this request got (None: not begun).
    pub phase: Option<RebootPhase>,
    /// The graceful shutdown was asked longer ago than the graceful timeout.
    pub graceful_expired: bool,
}

/// Everything one pass observed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostObservation {
    /// `status.state` as last written.
    pub state: Option<HostState>,
    pub claim: Option<Claim>,
    /// The claim whose one-time boot was issued (status, else the annotation).
    pub boot_issued_for: Option<String>,
    pub power: Power,
    /// A power change asked within the grace period (not asked again while it runs).
    pub pending_power: Option<PowerChange>,
    pub slots: Vec<SlotState>,
    pub lock: Lock,
    /// This process serves artifacts for the host.
    pub registered: bool,
    /// Prepared when [`needs_media`] says so.
    pub media: Option<Media>,
    /// The BMC's `SecureBoot` resource (None: no such resource, or not read).
    pub secure_boot_enforced: Option<bool>,
    /// The claim's Machine has a Node ([`beskar7_api::NODE_JOINED_ANNOTATION`]).
    pub node_joined: bool,
    /// The claim's media were already withdrawn (`status.configWithdrawnAt`).
    pub withdrawn: bool,
    /// A reboot request on the host.
    pub reboot: Option<RebootObservation>,
}

/// One thing to do, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Stop serving the host's artifact URLs.
    Revoke,
    /// Take (or renew) the provisioning lock on a fresh read of the host; when refused, stop.
    TakeLock,
    Power(PowerChange),
    Eject(String),
    Insert {
        slot: String,
        url: String,
    },
    BootOnce(BootMode),
    /// Persist which claim's boot was issued (None: forget it) and let go of the lock.
    RecordBootIssued(Option<String>),
    /// Note in status that the claim's media were withdrawn (its Node joined).
    RecordWithdrawn,
    /// Note in `status.reboot` how far the request got (`message`: why it was refused).
    RecordReboot {
        request: String,
        phase: RebootPhase,
        message: Option<String>,
    },
    /// Remove the reboot annotation, if it still holds this request.
    RemoveRebootAnnotation(String),
}

impl Step {
    /// Steps that change the server: run only under the lock.
    pub fn changes_bmc(&self) -> bool {
        matches!(
            self,
            Self::Power(_) | Self::Eject(_) | Self::Insert { .. } | Self::BootOnce(_)
        )
    }
}

/// Reasons of the Ready condition the plan sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadyReason {
    Available,
    Provisioned,
    Booting,
    PoweringOff,
    WaitingForPower,
    Deprovisioning,
    WaitingForLock,
    ReleasingEarlierClaim,
    SecureBootEnabled,
    SecondMediaRefused,
    Rebooting,
}

impl ReadyReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Available => "Available",
            Self::Provisioned => "Provisioned",
            Self::Booting => "Booting",
            Self::PoweringOff => "PoweringOff",
            Self::WaitingForPower => "WaitingForPower",
            Self::Deprovisioning => "Deprovisioning",
            Self::WaitingForLock => "WaitingForLock",
            Self::ReleasingEarlierClaim => "ReleasingEarlierClaim",
            Self::SecureBootEnabled => "SecureBootEnabled",
            Self::SecondMediaRefused => "SecondMediaRefused",
            Self::Rebooting => "Rebooting",
        }
    }
}

/// When to look again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Requeue {
    /// Something is under way: soon.
    Poll,
    /// Nothing to do: the idle refresh.
    Refresh,
    /// Only a person can change this (Secure Boot): slowly.
    Slow,
}

/// The outcome of [`plan`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPlan {
    pub steps: Vec<Step>,
    /// The state once the steps ran (the only place a HostState is chosen).
    pub state: HostState,
    pub ready: bool,
    pub reason: ReadyReason,
    pub message: String,
    pub requeue: Requeue,
}

impl HostPlan {
    fn new(state: HostState, ready: bool, reason: ReadyReason, message: impl Into<String>) -> Self {
        HostPlan {
            steps: Vec::new(),
            state,
            ready,
            reason,
            message: message.into(),
            requeue: if ready {
                Requeue::Refresh
            } else {
                Requeue::Poll
            },
        }
    }

    fn with(mut self, steps: Vec<Step>) -> Self {
        self.steps = steps;
        self
    }

    /// What to report when [`Step::TakeLock`] was refused: nothing after it ran.
    pub fn lock_refused(&self, obs: &HostObservation) -> HostPlan {
        HostPlan::new(
            obs.state
                .filter(|s| *s != HostState::Error)
                .unwrap_or(HostState::Claimed),
            false,
            ReadyReason::WaitingForLock,
            "another manager holds this host's provisioning lock, or our copy was stale",
        )
    }
}

/// What a refused second device leaves: everything ejected, the boot still to come, now with
/// the configuration served by URL (the next pass prepares it so).
pub fn second_media_refused(obs: &HostObservation) -> HostPlan {
    let _ = obs;
    HostPlan::new(
        HostState::Claimed,
        false,
        ReadyReason::SecondMediaRefused,
        "the BMC refused a second virtual media device; the configuration will be served by URL",
    )
}

/// Whether this pass must prepare the claim's media: the boot is still to be issued, or it was
/// issued and this process does not serve its URLs yet (a restart while the BMC and the OS
/// still read them).
pub fn needs_media(
    claim: Option<&Claim>,
    boot_issued_for: Option<&str>,
    registered: bool,
    node_joined: bool,
) -> bool {
    if node_joined {
        // The OS has its configuration: nothing is served for this claim again.
        return false;
    }
    match (claim, boot_issued_for) {
        (None, _) => false,
        (Some(c), Some(b)) if b != c.key => false,
        (Some(_), Some(_)) => !registered,
        (Some(_), None) => true,
    }
}

/// The host holds something of a claim: media, a lock, served URLs, an issued boot, or a state
/// only a claim leads to.
fn holds_claim_leftovers(obs: &HostObservation) -> bool {
    obs.boot_issued_for.is_some()
        || obs.registered
        || obs.lock != Lock::Free
        || obs.slots.iter().any(|s| s.image.is_some())
        || matches!(
            obs.state,
            Some(
                HostState::Claimed
                    | HostState::Provisioning
                    | HostState::Provisioned
                    | HostState::Deprovisioning
            )
        )
}

/// Power off unless already off or asked to within the grace period.
fn power_off(obs: &HostObservation) -> Option<Step> {
    (obs.power != Power::Off && obs.pending_power != Some(PowerChange::ForceOff))
        .then_some(Step::Power(PowerChange::ForceOff))
}

/// Gives back everything of a past claim: URLs, power, media, lock, the boot record.
fn release(obs: &HostObservation, earlier_claim: bool) -> HostPlan {
    let reason = if earlier_claim {
        ReadyReason::ReleasingEarlierClaim
    } else {
        ReadyReason::Deprovisioning
    };
    let mut steps = Vec::new();
    if obs.registered {
        steps.push(Step::Revoke);
    }
    steps.extend(power_off(obs));
    for s in obs.slots.iter().filter(|s| s.image.is_some()) {
        steps.push(Step::Eject(s.path.clone()));
    }
    let empty = obs.slots.iter().all(|s| s.image.is_none());
    if obs.power == Power::Off && empty {
        // Everything of the claim is gone: forget it (and any lock) and be free again.
        steps.push(Step::RecordBootIssued(None));
        if earlier_claim {
            // The new claim is planned on the next pass, from a clean host.
            return HostPlan::new(
                HostState::Deprovisioning,
                false,
                reason,
                "the earlier claim is released",
            )
            .with(steps);
        }
        return HostPlan::new(
            HostState::Available,
            true,
            ReadyReason::Available,
            "inventoried and free to be claimed",
        )
        .with(steps);
    }
    let message = if obs.power == Power::Off {
        "ejecting the media of the released claim"
    } else {
        "powering off and ejecting the media of the released claim"
    };
    HostPlan::new(HostState::Deprovisioning, false, reason, message).with(steps)
}

/// Decides the pass (see the module docs).
pub fn plan(obs: &HostObservation) -> HostPlan {
    let p = plan_claim(obs);
    match &obs.reboot {
        Some(r) => reboot(obs, r, p),
        None => p,
    }
}

/// The claim's part of the pass: enrol, boot, release.
fn plan_claim(obs: &HostObservation) -> HostPlan {
    let Some(claim) = &obs.claim else {
        if holds_claim_leftovers(obs) {
            return release(obs, false);
        }
        return HostPlan::new(
            HostState::Available,
            true,
            ReadyReason::Available,
            "inventoried and free to be claimed",
        );
    };
    match obs.boot_issued_for.as_deref() {
        Some(b) if b != claim.key => release(obs, true),
        Some(_) => booted(obs),
        None => boot(obs, claim),
    }
}

/// A requested reboot: power off (gracefully, forced once the graceful timeout passed), then on,
/// each step seen on the BMC before the next. Only a Provisioned host (its claim's boot issued)
/// is rebooted; otherwise the request is refused. Either way the annotation goes once the
/// request is final, and a final request is never carried out again. `claim_plan` is what the
/// pass does without the reboot.
fn reboot(obs: &HostObservation, r: &RebootObservation, claim_plan: HostPlan) -> HostPlan {
    let record = |phase, message: Option<String>| Step::RecordReboot {
        request: r.request.clone(),
        phase,
        message,
    };
    let remove = Step::RemoveRebootAnnotation(r.request.clone());
    let with_steps = |mut p: HostPlan, steps: Vec<Step>| {
        p.steps.extend(steps);
        p
    };
    if r.phase.is_some_and(RebootPhase::is_final) {
        return with_steps(claim_plan, vec![remove]);
    }
    let booted = obs
        .claim
        .as_ref()
        .is_some_and(|c| obs.boot_issued_for.as_deref() == Some(c.key.as_str()));
    let provisioned = booted && (obs.state == Some(HostState::Provisioned) || r.phase.is_some());
    if !provisioned {
        let why = match (r.phase, booted) {
            (Some(_), _) => "the host's claim was released during the reboot".to_string(),
            (None, _) => format!(
                "the host is {}, and only a Provisioned host is rebooted",
                obs.state.unwrap_or_default()
            ),
        };
        let message = format!(
            "reboot {:?} refused: {why}; the annotation was removed",
            r.request
        );
        return with_steps(
            claim_plan,
            vec![record(RebootPhase::Refused, Some(message)), remove],
        );
    }
    let rebooting = |steps: Vec<Step>, message: String| {
        HostPlan::new(
            HostState::Provisioned,
            false,
            ReadyReason::Rebooting,
            message,
        )
        .with(steps)
    };
    let power_on = || {
        rebooting(
            vec![
                Step::Power(PowerChange::On),
                record(RebootPhase::PoweringOn, None),
            ],
            format!("reboot {:?}: powered off, powering on", r.request),
        )
    };
    match (r.phase, &obs.power) {
        (None, Power::Off) => power_on(),
        (None, _) => rebooting(
            vec![
                Step::Power(PowerChange::GracefulOff),
                record(RebootPhase::ShuttingDown, None),
            ],
            format!("reboot {:?}: asking the OS to shut down", r.request),
        ),
        (Some(RebootPhase::ShuttingDown | RebootPhase::ForcingOff), Power::Off) => power_on(),
        (Some(RebootPhase::ShuttingDown), _) if r.graceful_expired => rebooting(
            vec![
                Step::Power(PowerChange::ForceOff),
                record(RebootPhase::ForcingOff, None),
            ],
            format!(
                "reboot {:?}: the OS did not shut down in time; forcing the power off",
                r.request
            ),
        ),
        (Some(RebootPhase::ShuttingDown), p) => rebooting(
            Vec::new(),
            format!(
                "reboot {:?}: waiting for the OS to shut down (power {p:?})",
                r.request
            ),
        ),
        (Some(RebootPhase::ForcingOff), p) => rebooting(
            (obs.pending_power != Some(PowerChange::ForceOff))
                .then_some(Step::Power(PowerChange::ForceOff))
                .into_iter()
                .collect(),
            format!(
                "reboot {:?}: forcing the power off (power {p:?})",
                r.request
            ),
        ),
        (Some(RebootPhase::PoweringOn), Power::On) => with_steps(
            claim_plan,
            vec![record(RebootPhase::Completed, None), remove],
        ),
        (Some(RebootPhase::PoweringOn), p) => rebooting(
            (*p == Power::Off && obs.pending_power != Some(PowerChange::On))
                .then_some(Step::Power(PowerChange::On))
                .into_iter()
                .collect(),
            format!("reboot {:?}: powering on (power {p:?})", r.request),
        ),
        // Returned above already; kept so the match needs no panic.
        (Some(RebootPhase::Completed | RebootPhase::Refused), _) => {
            with_steps(claim_plan, vec![remove])
        }
    }
}

/// The `Rebooted` condition for `status.reboot`: (status, reason, message).
pub fn reboot_condition(r: &beskar7_api::RebootStatus) -> (bool, &'static str, String) {
    use beskar7_api::conditions::reason;
    match r.phase {
        RebootPhase::Completed => (
            true,
            reason::REBOOT_COMPLETED,
            format!(
                "reboot {:?} completed{}",
                r.request,
                if r.forced {
                    " (forced off: the OS did not shut down within the graceful timeout)"
                } else {
                    ""
                }
            ),
        ),
        RebootPhase::Refused => (
            false,
            reason::REBOOT_REFUSED,
            r.message
                .clone()
                .unwrap_or_else(|| format!("reboot {:?} refused", r.request)),
        ),
        phase => (
            false,
            phase.as_str(),
            format!("reboot {:?} in progress: {}", r.request, phase.as_str()),
        ),
    }
}

/// The claim's boot was issued: wait for power, never cycle again.
fn booted(obs: &HostObservation) -> HostPlan {
    match &obs.power {
        Power::On if obs.node_joined && !obs.withdrawn => {
            // The Node joined: the OS read its configuration. Nothing of it stays servable.
            let mut steps = Vec::new();
            if obs.registered {
                steps.push(Step::Revoke);
            }
            for s in obs.slots.iter().filter(|s| s.image.is_some()) {
                steps.push(Step::Eject(s.path.clone()));
            }
            steps.push(Step::RecordWithdrawn);
            HostPlan::new(
                HostState::Provisioned,
                true,
                ReadyReason::Provisioned,
                "booted; the Node joined, so its media were ejected and its bootstrap data is no longer served",
            )
            .with(steps)
        }
        Power::On => HostPlan::new(
            HostState::Provisioned,
            true,
            ReadyReason::Provisioned,
            "booted from virtual media",
        ),
        Power::Off => {
            let steps = if obs.pending_power == Some(PowerChange::On) {
                Vec::new()
            } else {
                vec![Step::Power(PowerChange::On)]
            };
            HostPlan::new(
                HostState::Provisioning,
                false,
                ReadyReason::WaitingForPower,
                "the one-time boot is set; powering on",
            )
            .with(steps)
        }
        Power::Transitioning(p) | Power::Unknown(p) => HostPlan::new(
            HostState::Provisioning,
            false,
            ReadyReason::WaitingForPower,
            format!("the one-time boot is set; the BMC reports power {p:?}"),
        ),
    }
}

/// The claim's boot is still to come: from a powered-off server with only our media, set the
/// one-time boot, record it, then power on (so a restart after this waits instead of cycling).
fn boot(obs: &HostObservation, claim: &Claim) -> HostPlan {
    let media = obs
        .media
        .as_ref()
        .expect("needs_media holds: the shell prepares the media before planning");
    if claim.boot_mode == BootMode::Uefi
        && media.needs_secure_boot_off
        && obs.secure_boot_enforced == Some(true)
    {
        let mut p = HostPlan::new(
            HostState::Error,
            false,
            ReadyReason::SecureBootEnabled,
            "the host has UEFI Secure Boot enabled, and the image served for it carries the kernel arguments only with Secure Boot off (Beskar7's UEFI loader is unsigned; systemd-stub ignores passed options under Secure Boot): disable Secure Boot on the host, use bootMode: Legacy, or an image that carries the arguments itself (provisioningMode PreBakedISO)",
        );
        p.requeue = Requeue::Slow;
        return p;
    }
    if obs.lock == Lock::OtherLive {
        return HostPlan::new(
            HostState::Claimed,
            false,
            ReadyReason::WaitingForLock,
            "another manager is provisioning this host",
        );
    }
    let mut steps = vec![Step::TakeLock];
    if obs.power != Power::Off {
        steps.extend(power_off(obs));
        return HostPlan::new(
            HostState::Claimed,
            false,
            ReadyReason::PoweringOff,
            "powering the server off before inserting media",
        )
        .with(steps);
    }
    for s in &obs.slots {
        let want = if s.path == media.boot_slot {
            Some(media.boot_url.as_str())
        } else {
            media
                .config
                .as_ref()
                .filter(|(slot, _)| *slot == s.path)
                .map(|(_, url)| url.as_str())
        };
        if s.image.is_some() && s.image.as_deref() != want {
            steps.push(Step::Eject(s.path.clone()));
        }
        if let Some(url) = want
            && s.image.as_deref() != Some(url)
        {
            steps.push(Step::Insert {
                slot: s.path.clone(),
                url: url.to_string(),
            });
        }
    }
    steps.push(Step::BootOnce(claim.boot_mode));
    steps.push(Step::RecordBootIssued(Some(claim.key.clone())));
    steps.push(Step::Power(PowerChange::On));
    HostPlan::new(
        HostState::Provisioning,
        false,
        ReadyReason::Booting,
        "media inserted, one-time boot from virtual CD set, powering on",
    )
    .with(steps)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLAIM: &str = "ns/m1";
    const OTHER: &str = "ns/m0";
    const BOOT_SLOT: &str = "/VirtualMedia/Cd";
    const CFG_SLOT: &str = "/VirtualMedia/Floppy";
    const BOOT_URL: &str = "http://a/t/boot.iso";
    const CFG_URL: &str = "http://a/t/config.img";

    #[derive(Clone, Copy, Debug)]
    enum Issued {
        None,
        This,
        Other,
    }

    fn obs(
        claimed: bool,
        issued: Issued,
        power: Power,
        state: Option<HostState>,
        lock: Lock,
        inserted: bool,
    ) -> HostObservation {
        obs_registered(
            claimed,
            issued,
            power,
            state,
            lock,
            inserted,
            claimed || inserted,
        )
    }

    /// `registered`: this process serves the host's URLs (false after a restart).
    fn obs_registered(
        claimed: bool,
        issued: Issued,
        power: Power,
        state: Option<HostState>,
        lock: Lock,
        inserted: bool,
        registered: bool,
    ) -> HostObservation {
        let claim = claimed.then(|| Claim {
            key: CLAIM.into(),
            boot_mode: BootMode::Uefi,
        });
        let boot_issued_for = match issued {
            Issued::None => None,
            Issued::This => Some(CLAIM.to_string()),
            Issued::Other => Some(OTHER.to_string()),
        };
        let media = needs_media(
            claim.as_ref(),
            boot_issued_for.as_deref(),
            registered,
            false,
        )
        .then(|| Media {
            boot_slot: BOOT_SLOT.into(),
            boot_url: BOOT_URL.into(),
            config: Some((CFG_SLOT.into(), CFG_URL.into())),
            needs_secure_boot_off: false,
        });
        HostObservation {
            state,
            claim,
            boot_issued_for,
            power,
            pending_power: None,
            slots: vec![
                SlotState {
                    path: BOOT_SLOT.into(),
                    image: inserted.then(|| BOOT_URL.to_string()),
                },
                SlotState {
                    path: CFG_SLOT.into(),
                    image: inserted.then(|| CFG_URL.to_string()),
                },
            ],
            lock,
            registered,
            media,
            secure_boot_enforced: None,
            node_joined: false,
            withdrawn: false,
            reboot: None,
        }
    }

    fn powers() -> Vec<Power> {
        vec![
            Power::On,
            Power::Off,
            Power::Transitioning("PoweringOn".into()),
            Power::Unknown(String::new()),
        ]
    }

    const STATES: [Option<HostState>; 8] = [
        None,
        Some(HostState::Enrolling),
        Some(HostState::Available),
        Some(HostState::Claimed),
        Some(HostState::Provisioning),
        Some(HostState::Provisioned),
        Some(HostState::Deprovisioning),
        Some(HostState::Error),
    ];
    const LOCKS: [Lock; 4] = [Lock::Free, Lock::Ours, Lock::OtherLive, Lock::Expired];

    /// The whole grid: every row must satisfy the invariants, whatever the combination.
    #[test]
    fn every_combination_keeps_the_invariants() {
        let mut rows = 0;
        for claimed in [false, true] {
            for issued in [Issued::None, Issued::This, Issued::Other] {
                for power in powers() {
                    for state in STATES {
                        for lock in LOCKS {
                            for inserted in [false, true] {
                                for registered in [false, true] {
                                    for reboot in reboots() {
                                        let mut o = obs_registered(
                                            claimed,
                                            issued,
                                            power.clone(),
                                            state,
                                            lock,
                                            inserted,
                                            registered,
                                        );
                                        o.reboot = reboot;
                                        let p = plan(&o);
                                        check_invariants(&o, &p);
                                        rows += 1;
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        assert_eq!(rows, 2 * 3 * 4 * 8 * 4 * 2 * 2 * 8);
    }

    /// No request, a new one, and one in each phase (the graceful timeout passed or not).
    fn reboots() -> Vec<Option<RebootObservation>> {
        let r = |phase, graceful_expired| {
            Some(RebootObservation {
                request: "r1".into(),
                phase,
                graceful_expired,
            })
        };
        vec![
            None,
            r(None, false),
            r(Some(RebootPhase::ShuttingDown), false),
            r(Some(RebootPhase::ShuttingDown), true),
            r(Some(RebootPhase::ForcingOff), false),
            r(Some(RebootPhase::PoweringOn), false),
            r(Some(RebootPhase::Completed), false),
            r(Some(RebootPhase::Refused), false),
        ]
    }

    fn check_reboot_invariants(o: &HostObservation, p: &HostPlan, ctx: &str) {
        let powers_off = p.steps.iter().any(|s| {
            matches!(
                s,
                Step::Power(PowerChange::ForceOff | PowerChange::GracefulOff)
            )
        });
        let booted = o.claim.is_some() && o.boot_issued_for.as_deref() == Some(CLAIM);
        let recorded = |phase: RebootPhase| {
            p.steps
                .iter()
                .position(|s| matches!(s, Step::RecordReboot { phase: f, .. } if *f == phase))
        };
        let removed = p
            .steps
            .iter()
            .position(|s| matches!(s, Step::RemoveRebootAnnotation(_)));
        let Some(r) = &o.reboot else {
            assert!(
                recorded(RebootPhase::Completed).is_none() && removed.is_none(),
                "{ctx}"
            );
            return;
        };
        // A final request is never carried out again: the pass is the claim's, plus the cleanup.
        if r.phase.is_some_and(RebootPhase::is_final) {
            let mut without = o.clone();
            without.reboot = None;
            let mut expected = plan(&without);
            expected
                .steps
                .push(Step::RemoveRebootAnnotation(r.request.clone()));
            assert_eq!(p, &expected, "{ctx}");
            return;
        }
        // Only a Provisioned host is rebooted; any other is refused, never power-cycled for it.
        let allowed = booted && (o.state == Some(HostState::Provisioned) || r.phase.is_some());
        if !allowed {
            assert!(recorded(RebootPhase::Refused).is_some(), "{ctx}");
            assert!(
                !p.steps
                    .iter()
                    .any(|s| matches!(s, Step::Power(PowerChange::GracefulOff))),
                "{ctx}"
            );
        } else {
            assert_eq!(p.state, HostState::Provisioned, "{ctx}");
            // The graceful shutdown is asked once, for a new request of a powered host.
            let graceful = p.steps.contains(&Step::Power(PowerChange::GracefulOff));
            assert_eq!(
                graceful,
                r.phase.is_none() && o.power != Power::Off,
                "{ctx}"
            );
            // Forced off only after the graceful timeout (or resuming a forced off).
            if p.steps.contains(&Step::Power(PowerChange::ForceOff)) {
                assert!(
                    r.graceful_expired || r.phase == Some(RebootPhase::ForcingOff),
                    "{ctx}"
                );
            }
            // Powered on only once off, and the power-on recorded after it was asked.
            if p.steps.contains(&Step::Power(PowerChange::On)) {
                assert!(
                    o.power == Power::Off && !powers_off,
                    "on while not off: {ctx}"
                );
            }
            // Completed only once on again after the power-on phase.
            if recorded(RebootPhase::Completed).is_some() {
                assert!(
                    r.phase == Some(RebootPhase::PoweringOn) && o.power == Power::On,
                    "{ctx}"
                );
            }
        }
        // The annotation goes only after the request's final record.
        if let Some(removed) = removed {
            let final_record = recorded(RebootPhase::Completed).or(recorded(RebootPhase::Refused));
            assert!(final_record.is_some_and(|f| f < removed), "{ctx}");
        }
    }

    fn reboot_obs(phase: Option<RebootPhase>, power: Power, expired: bool) -> HostObservation {
        let mut o = obs(
            true,
            Issued::This,
            power,
            Some(HostState::Provisioned),
            Lock::Free,
            false,
        );
        o.reboot = Some(RebootObservation {
            request: "r1".into(),
            phase,
            graceful_expired: expired,
        });
        o
    }

    fn recorded_phase(p: &HostPlan) -> Option<RebootPhase> {
        p.steps.iter().find_map(|s| match s {
            Step::RecordReboot { phase, .. } => Some(*phase),
            _ => None,
        })
    }

    #[test]
    fn a_reboot_walks_graceful_forced_on_completed() {
        // Asked: graceful shutdown first, recorded after it was sent.
        let p = plan(&reboot_obs(None, Power::On, false));
        assert_eq!(p.steps[0], Step::Power(PowerChange::GracefulOff), "{p:?}");
        assert_eq!(recorded_phase(&p), Some(RebootPhase::ShuttingDown));
        assert_eq!((p.ready, p.reason), (false, ReadyReason::Rebooting));
        // The OS takes its time: nothing is asked again before the timeout.
        let p = plan(&reboot_obs(
            Some(RebootPhase::ShuttingDown),
            Power::On,
            false,
        ));
        assert!(p.steps.is_empty(), "{p:?}");
        // It did not shut down in time: forced.
        let p = plan(&reboot_obs(
            Some(RebootPhase::ShuttingDown),
            Power::On,
            true,
        ));
        assert_eq!(p.steps[0], Step::Power(PowerChange::ForceOff));
        assert_eq!(recorded_phase(&p), Some(RebootPhase::ForcingOff));
        // Off: on again.
        let p = plan(&reboot_obs(
            Some(RebootPhase::ForcingOff),
            Power::Off,
            false,
        ));
        assert_eq!(p.steps[0], Step::Power(PowerChange::On));
        assert_eq!(recorded_phase(&p), Some(RebootPhase::PoweringOn));
        // On: completed, the annotation removed, the host Ready again.
        let p = plan(&reboot_obs(Some(RebootPhase::PoweringOn), Power::On, false));
        assert_eq!(recorded_phase(&p), Some(RebootPhase::Completed));
        assert_eq!(
            p.steps.last(),
            Some(&Step::RemoveRebootAnnotation("r1".into()))
        );
        assert_eq!(
            (p.state, p.ready, p.reason),
            (HostState::Provisioned, true, ReadyReason::Provisioned)
        );
    }

    #[test]
    fn a_resumed_reboot_continues_from_the_power_state() {
        // A restart after the graceful shutdown: the server is off, so it is powered on, not
        // shut down a second time.
        let p = plan(&reboot_obs(
            Some(RebootPhase::ShuttingDown),
            Power::Off,
            false,
        ));
        assert_eq!(p.steps[0], Step::Power(PowerChange::On));
        // A restart after the power-on: nothing is asked again while the BMC carries it out.
        let mut o = reboot_obs(Some(RebootPhase::PoweringOn), Power::Off, false);
        o.pending_power = Some(PowerChange::On);
        assert!(plan(&o).steps.is_empty());
        // A request that completed is never carried out again, however the server is now.
        for power in powers() {
            let p = plan(&reboot_obs(Some(RebootPhase::Completed), power, false));
            assert!(
                !p.steps.iter().any(|s| matches!(
                    s,
                    Step::Power(PowerChange::GracefulOff | PowerChange::ForceOff)
                )),
                "{p:?}"
            );
        }
    }

    #[test]
    fn a_reboot_of_a_host_that_is_not_provisioned_is_refused_and_removed() {
        let mut o = obs(
            true,
            Issued::None,
            Power::Off,
            Some(HostState::Claimed),
            Lock::Free,
            false,
        );
        o.reboot = Some(RebootObservation {
            request: "r1".into(),
            phase: None,
            graceful_expired: false,
        });
        let p = plan(&o);
        let message = p.steps.iter().find_map(|s| match s {
            Step::RecordReboot {
                phase: RebootPhase::Refused,
                message,
                ..
            } => message.clone(),
            _ => None,
        });
        assert!(
            message
                .as_deref()
                .is_some_and(|m| m.contains("Claimed") && m.contains("only a Provisioned host")),
            "{p:?}"
        );
        assert_eq!(
            p.steps.last(),
            Some(&Step::RemoveRebootAnnotation("r1".into()))
        );
        // The boot goes on as it would have.
        assert!(p.steps.contains(&Step::BootOnce(BootMode::Uefi)), "{p:?}");
    }

    fn check_invariants(o: &HostObservation, p: &HostPlan) {
        let ctx = format!("{o:?} -> {p:?}");
        let powers_on = p.steps.contains(&Step::Power(PowerChange::On));
        // Never two boots: powering on only with the boot recorded for this claim first.
        if powers_on {
            let recorded = p
                .steps
                .iter()
                .position(|s| *s == Step::RecordBootIssued(Some(CLAIM.into())));
            let on = p
                .steps
                .iter()
                .position(|s| *s == Step::Power(PowerChange::On));
            assert!(
                o.boot_issued_for.as_deref() == Some(CLAIM) || recorded < on && recorded.is_some(),
                "power-on without a recorded boot: {ctx}"
            );
            assert!(o.claim.is_some(), "power-on without a claim: {ctx}");
        }
        // A boot already issued for this claim is never issued again, nor power-cycled unless a
        // reboot was asked.
        let rebooting = o
            .reboot
            .as_ref()
            .is_some_and(|r| !r.phase.is_some_and(RebootPhase::is_final));
        if o.claim.is_some() && o.boot_issued_for.as_deref() == Some(CLAIM) {
            assert!(
                !p.steps.iter().any(|s| matches!(
                    s,
                    Step::BootOnce(_) | Step::Insert { .. } | Step::Eject(_)
                ) || (!rebooting
                    && matches!(
                        s,
                        Step::Power(PowerChange::ForceOff | PowerChange::GracefulOff)
                    ))),
                "{ctx}"
            );
        }
        // BMC changes for a boot happen under the lock, taken first.
        let changes = p.steps.iter().any(|s| {
            s.changes_bmc()
                && !matches!(s, Step::Power(PowerChange::On) if o.boot_issued_for.is_some())
        });
        if changes && o.claim.is_some() && o.boot_issued_for.is_none() {
            assert_eq!(p.steps.first(), Some(&Step::TakeLock), "{ctx}");
        }
        // Never another manager's boot sequence.
        if o.lock == Lock::OtherLive && o.claim.is_some() && o.boot_issued_for.is_none() {
            // (A reboot request is refused meanwhile: that touches only the host object.)
            assert!(
                p.steps.iter().all(|s| matches!(
                    s,
                    Step::RecordReboot { .. } | Step::RemoveRebootAnnotation(_)
                )),
                "{ctx}"
            );
        }
        check_release_invariants(o, p, &ctx);
        check_reboot_invariants(o, p, &ctx);
    }

    fn check_release_invariants(o: &HostObservation, p: &HostPlan, ctx: &str) {
        // Without a claim, nothing is inserted or booted, and the host ends empty before Available.
        if o.claim.is_none() {
            assert!(
                !p.steps.iter().any(|s| matches!(
                    s,
                    Step::Insert { .. } | Step::BootOnce(_) | Step::Power(PowerChange::On)
                )),
                "{ctx}"
            );
            if p.state == HostState::Available {
                assert!(
                    o.slots.iter().all(|s| s.image.is_none()) && o.power == Power::Off
                        || !holds_claim_leftovers(o),
                    "{ctx}"
                );
            }
            // Leftovers of a claim are always given back: URLs revoked, media ejected.
            if holds_claim_leftovers(o) {
                assert_eq!(p.steps.contains(&Step::Revoke), o.registered, "{ctx}");
                for s in o.slots.iter().filter(|s| s.image.is_some()) {
                    assert!(p.steps.contains(&Step::Eject(s.path.clone())), "{ctx}");
                }
                // Available only once off and empty, with the claim's records cleared now.
                if p.state == HostState::Available {
                    assert!(
                        o.power == Power::Off && o.slots.iter().all(|s| s.image.is_none()),
                        "{ctx}"
                    );
                    assert!(p.steps.contains(&Step::RecordBootIssued(None)), "{ctx}");
                }
            }
        }
        // A host released from an earlier claim is cleaned before the new one touches it.
        if o.claim.is_some() && o.boot_issued_for.as_deref() == Some(OTHER) {
            assert!(
                !p.steps
                    .iter()
                    .any(|s| matches!(s, Step::Insert { .. } | Step::BootOnce(_))),
                "{ctx}"
            );
        }
        // Ready only when Available or Provisioned (and not rebooting).
        assert_eq!(
            p.ready,
            matches!(p.state, HostState::Available | HostState::Provisioned)
                && p.reason != ReadyReason::Rebooting,
            "{ctx}"
        );
    }

    fn steps(p: &HostPlan) -> Vec<Step> {
        p.steps.clone()
    }

    /// Rows with their exact expectation.
    #[test]
    fn named_rows() {
        use HostState::*;
        // Enrolled, nothing of a claim: Available, no step.
        let p = plan(&obs(
            false,
            Issued::None,
            Power::Off,
            Some(Enrolling),
            Lock::Free,
            false,
        ));
        assert_eq!((p.state, steps(&p)), (Available, vec![]));

        // Claimed, powered on: lock, power off first, nothing inserted yet.
        let p = plan(&obs(
            true,
            Issued::None,
            Power::On,
            Some(Available),
            Lock::Free,
            false,
        ));
        assert_eq!(p.state, Claimed);
        assert_eq!(
            steps(&p),
            vec![Step::TakeLock, Step::Power(PowerChange::ForceOff)]
        );
        assert_eq!(p.reason, ReadyReason::PoweringOff);

        // Claimed, off: the whole boot sequence, recorded before power-on.
        let p = plan(&obs(
            true,
            Issued::None,
            Power::Off,
            Some(Claimed),
            Lock::Ours,
            false,
        ));
        assert_eq!(p.state, Provisioning);
        assert_eq!(
            steps(&p),
            vec![
                Step::TakeLock,
                Step::Insert {
                    slot: BOOT_SLOT.into(),
                    url: BOOT_URL.into()
                },
                Step::Insert {
                    slot: CFG_SLOT.into(),
                    url: CFG_URL.into()
                },
                Step::BootOnce(BootMode::Uefi),
                Step::RecordBootIssued(Some(CLAIM.into())),
                Step::Power(PowerChange::On),
            ]
        );
    }

    #[test]
    fn named_rows_locks() {
        use HostState::*;
        // Another manager's live lock: wait, touch nothing.
        let p = plan(&obs(
            true,
            Issued::None,
            Power::Off,
            Some(Claimed),
            Lock::OtherLive,
            false,
        ));
        assert_eq!(
            (p.state, steps(&p), p.reason),
            (Claimed, vec![], ReadyReason::WaitingForLock)
        );
        // An expired lock is taken over.
        let p = plan(&obs(
            true,
            Issued::None,
            Power::Off,
            Some(Claimed),
            Lock::Expired,
            false,
        ));
        assert_eq!(p.steps.first(), Some(&Step::TakeLock));
    }

    #[test]
    fn named_rows_after_the_boot() {
        use HostState::*;
        // Boot issued, powered on: Provisioned. Powered off: power on (once). Transitioning: wait.
        let p = plan(&obs(
            true,
            Issued::This,
            Power::On,
            Some(Provisioning),
            Lock::Free,
            true,
        ));
        assert_eq!((p.state, steps(&p)), (Provisioned, vec![]));
        let mut o = obs(
            true,
            Issued::This,
            Power::Off,
            Some(Provisioning),
            Lock::Free,
            true,
        );
        assert_eq!(steps(&plan(&o)), vec![Step::Power(PowerChange::On)]);
        o.pending_power = Some(PowerChange::On);
        assert_eq!(
            steps(&plan(&o)),
            vec![],
            "not asked again while the BMC carries it out"
        );
        let p = plan(&obs(
            true,
            Issued::This,
            Power::Unknown("".into()),
            Some(Provisioning),
            Lock::Free,
            true,
        ));
        assert_eq!((p.state, steps(&p)), (Provisioning, vec![]));
    }

    #[test]
    fn named_rows_stale_media_and_release() {
        use HostState::*;
        // Stale media from someone else: ejected, ours inserted.
        let mut o = obs(
            true,
            Issued::None,
            Power::Off,
            Some(Claimed),
            Lock::Ours,
            false,
        );
        o.slots[1].image = Some("http://elsewhere/old.img".into());
        let s = steps(&plan(&o));
        assert!(
            s.contains(&Step::Eject(CFG_SLOT.into()))
                && s.contains(&Step::Insert {
                    slot: CFG_SLOT.into(),
                    url: CFG_URL.into()
                }),
            "{s:?}"
        );

        // Released after provisioning: revoke, power off, eject; then Available when empty and off.
        let p = plan(&obs(
            false,
            Issued::This,
            Power::On,
            Some(Provisioned),
            Lock::Free,
            true,
        ));
        assert_eq!(p.state, Deprovisioning);
        assert_eq!(
            steps(&p),
            vec![
                Step::Revoke,
                Step::Power(PowerChange::ForceOff),
                Step::Eject(BOOT_SLOT.into()),
                Step::Eject(CFG_SLOT.into())
            ]
        );
        let p = plan(&obs(
            false,
            Issued::This,
            Power::Off,
            Some(Deprovisioning),
            Lock::Free,
            false,
        ));
        assert_eq!(
            (p.state, steps(&p)),
            (Available, vec![Step::RecordBootIssued(None)])
        );

        // A new claim on a host still holding an earlier one: released first.
        let p = plan(&obs(
            true,
            Issued::Other,
            Power::On,
            Some(Provisioned),
            Lock::Free,
            true,
        ));
        assert_eq!(p.reason, ReadyReason::ReleasingEarlierClaim);
        assert!(p.steps.contains(&Step::Power(PowerChange::ForceOff)));
    }

    /// The bug this plan replaced: a claim failed after its media went in (state Error, no boot
    /// issued), then the machine went away. The host must give everything back.
    #[test]
    fn error_then_release_ejects_revokes_and_unlocks() {
        let o = obs(
            false,
            Issued::None,
            Power::Off,
            Some(HostState::Error),
            Lock::Ours,
            true,
        );
        let p = plan(&o);
        assert_eq!(p.state, HostState::Deprovisioning);
        assert_eq!(
            p.steps,
            vec![
                Step::Revoke,
                Step::Eject(BOOT_SLOT.into()),
                Step::Eject(CFG_SLOT.into())
            ]
        );
        // Next pass: empty, off: the lock and the record are cleared, then Available.
        let mut after = o.clone();
        after.slots.iter_mut().for_each(|s| s.image = None);
        after.registered = false;
        after.state = Some(HostState::Deprovisioning);
        let p = plan(&after);
        assert_eq!(
            (p.state, p.steps),
            (HostState::Available, vec![Step::RecordBootIssued(None)])
        );
    }

    /// The same after a manager restart: nothing registered in this process, the lock gone, only
    /// the media in the BMC's slots tell that a claim was here.
    #[test]
    fn error_then_release_after_a_restart_still_ejects() {
        let o = obs_registered(
            false,
            Issued::None,
            Power::Off,
            Some(HostState::Error),
            Lock::Free,
            true,
            false,
        );
        let p = plan(&o);
        assert_eq!(p.state, HostState::Deprovisioning);
        assert_eq!(
            p.steps,
            vec![Step::Eject(BOOT_SLOT.into()), Step::Eject(CFG_SLOT.into())]
        );
    }

    #[test]
    fn secure_boot_on_the_host_stops_a_boot_that_needs_it_off() {
        let mut o = obs(
            true,
            Issued::None,
            Power::Off,
            Some(HostState::Claimed),
            Lock::Free,
            false,
        );
        o.media.as_mut().unwrap().needs_secure_boot_off = true;
        o.secure_boot_enforced = Some(true);
        let p = plan(&o);
        assert_eq!(
            (p.state, p.reason, p.steps.len()),
            (HostState::Error, ReadyReason::SecureBootEnabled, 0)
        );
        o.claim.as_mut().unwrap().boot_mode = BootMode::Legacy;
        assert_eq!(plan(&o).state, HostState::Provisioning);
        o.claim.as_mut().unwrap().boot_mode = BootMode::Uefi;
        o.secure_boot_enforced = Some(false);
        assert_eq!(plan(&o).state, HostState::Provisioning);
    }

    #[test]
    fn media_is_prepared_only_when_the_boot_needs_it() {
        let c = Claim {
            key: CLAIM.into(),
            boot_mode: BootMode::Uefi,
        };
        assert!(needs_media(Some(&c), None, false, false));
        assert!(
            needs_media(Some(&c), None, true, false),
            "every pass before the boot (the lock decides)"
        );
        assert!(
            !needs_media(Some(&c), Some(CLAIM), true, false),
            "booted and served: nothing to render"
        );
        assert!(
            needs_media(Some(&c), Some(CLAIM), false, false),
            "booted, but a restart lost the URLs"
        );
        assert!(
            !needs_media(Some(&c), Some(CLAIM), false, true),
            "the Node joined: never served again"
        );
        assert!(!needs_media(Some(&c), Some(OTHER), false, false));
        assert!(!needs_media(None, None, false, false));
    }

    /// Once the claim's Node joined, its media leave the BMC and its URLs stop answering, once.
    #[test]
    fn node_joined_withdraws_the_bootstrap_data_once() {
        let mut o = obs(
            true,
            Issued::This,
            Power::On,
            Some(HostState::Provisioned),
            Lock::Free,
            true,
        );
        o.node_joined = true;
        let p = plan(&o);
        assert_eq!(p.state, HostState::Provisioned);
        assert_eq!(
            p.steps,
            vec![
                Step::Revoke,
                Step::Eject(BOOT_SLOT.into()),
                Step::Eject(CFG_SLOT.into()),
                Step::RecordWithdrawn
            ]
        );
        o.withdrawn = true;
        assert!(plan(&o).steps.is_empty());
        // Not before the Node joined.
        o.node_joined = false;
        o.withdrawn = false;
        assert!(plan(&o).steps.is_empty());
    }

    #[test]
    fn power_and_persisted_names() {
        assert_eq!(Power::from_redfish(Some("On")), Power::On);
        assert_eq!(
            Power::from_redfish(Some("PoweringOff")),
            Power::Transitioning("PoweringOff".into())
        );
        assert_eq!(Power::from_redfish(None), Power::Unknown(String::new()));
        for c in [PowerChange::On, PowerChange::ForceOff] {
            assert_eq!(PowerChange::from_persisted(c.as_str()), Some(c));
        }
    }
}
