//! `metav1.Condition` bookkeeping shared by all controllers.

use beskar7_api::Condition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

pub use beskar7_api::conditions::reason;
pub use beskar7_api::conditions::types::*;

/// Sets condition `type_`; `lastTransitionTime` moves only when the status changes, so
/// reconciles that find nothing new write nothing new.
pub fn set(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: impl Into<String>,
    generation: Option<i64>,
) {
    let status = if status { "True" } else { "False" }.to_string();
    let message = message.into();
    if let Some(existing) = conditions.iter_mut().find(|c| c.type_ == type_) {
        if existing.status != status {
            existing.last_transition_time = now();
        }
        existing.status = status;
        existing.reason = reason.to_string();
        existing.message = message;
        existing.observed_generation = generation;
    } else {
        conditions.push(Condition {
            type_: type_.to_string(),
            status,
            reason: reason.to_string(),
            message,
            observed_generation: generation,
            last_transition_time: now(),
        });
    }
}

pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    conditions
        .iter()
        .any(|c| c.type_ == type_ && c.status == "True")
}

fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_time_moves_only_when_status_changes() {
        let mut c = Vec::new();
        set(&mut c, READY, false, "Waiting", "a", Some(1));
        let first = c[0].last_transition_time.clone();
        std::thread::sleep(std::time::Duration::from_millis(5));
        set(&mut c, READY, false, "StillWaiting", "b", Some(2));
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].last_transition_time, first);
        assert_eq!(c[0].reason, "StillWaiting");
        assert_eq!(c[0].observed_generation, Some(2));
        set(&mut c, READY, true, "Ready", "", Some(2));
        assert_ne!(c[0].last_transition_time, first);
        assert!(is_true(&c, READY));
        assert!(!is_true(&c, PAUSED));
    }
}
