//! Prometheus metrics, set up in one place and rendered as text on `/metrics`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    reconciles: BTreeMap<(String, String), u64>,
    reconcile_seconds: BTreeMap<String, (f64, u64)>,
    errors: BTreeMap<(String, String), u64>,
    host_transitions: BTreeMap<String, u64>,
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Metrics {
    pub fn reconciled(&self, controller: &str, ok: bool, took: Duration) {
        let mut m = self.inner.lock().unwrap();
        let result = if ok { "success" } else { "error" };
        *m.reconciles
            .entry((controller.into(), result.into()))
            .or_default() += 1;
        let d = m.reconcile_seconds.entry(controller.into()).or_default();
        d.0 += took.as_secs_f64();
        d.1 += 1;
    }

    pub fn reconcile_error(&self, controller: &str, reason: &str) {
        *self
            .inner
            .lock()
            .unwrap()
            .errors
            .entry((controller.into(), reason.into()))
            .or_default() += 1;
    }

    pub fn host_transition(&self, to: &str) {
        *self
            .inner
            .lock()
            .unwrap()
            .host_transitions
            .entry(to.into())
            .or_default() += 1;
    }

    /// Prometheus text exposition format. `hosts_by_state` is read from the informer cache at scrape time.
    pub fn render(&self, hosts_by_state: &BTreeMap<String, u64>) -> String {
        let m = self.inner.lock().unwrap();
        let mut out = String::new();
        out.push_str("# HELP beskar7_reconcile_total Reconciles by controller and result.\n# TYPE beskar7_reconcile_total counter\n");
        for ((c, r), v) in &m.reconciles {
            let _ = writeln!(
                out,
                "beskar7_reconcile_total{{controller=\"{}\",result=\"{}\"}} {v}",
                escape(c),
                escape(r)
            );
        }
        out.push_str("# HELP beskar7_reconcile_duration_seconds Time spent reconciling.\n# TYPE beskar7_reconcile_duration_seconds summary\n");
        for (c, (sum, count)) in &m.reconcile_seconds {
            let _ = writeln!(
                out,
                "beskar7_reconcile_duration_seconds_sum{{controller=\"{}\"}} {sum}",
                escape(c)
            );
            let _ = writeln!(
                out,
                "beskar7_reconcile_duration_seconds_count{{controller=\"{}\"}} {count}",
                escape(c)
            );
        }
        out.push_str("# HELP beskar7_reconcile_errors_total Reconcile errors by controller and condition reason.\n# TYPE beskar7_reconcile_errors_total counter\n");
        for ((c, r), v) in &m.errors {
            let _ = writeln!(
                out,
                "beskar7_reconcile_errors_total{{controller=\"{}\",reason=\"{}\"}} {v}",
                escape(c),
                escape(r)
            );
        }
        out.push_str("# HELP beskar7_host_transitions_total PhysicalHost state changes by new state.\n# TYPE beskar7_host_transitions_total counter\n");
        for (s, v) in &m.host_transitions {
            let _ = writeln!(
                out,
                "beskar7_host_transitions_total{{state=\"{}\"}} {v}",
                escape(s)
            );
        }
        out.push_str("# HELP beskar7_hosts PhysicalHosts by state.\n# TYPE beskar7_hosts gauge\n");
        for (s, v) in hosts_by_state {
            let _ = writeln!(out, "beskar7_hosts{{state=\"{}\"}} {v}", escape(s));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_with_labels() {
        let m = Metrics::default();
        m.reconciled("physicalhost", true, Duration::from_millis(20));
        m.reconciled("physicalhost", true, Duration::from_millis(30));
        m.reconcile_error("physicalhost", "BMCUnreachable");
        m.host_transition("Available");
        let text = m.render(&[("Available".to_string(), 3)].into());
        assert!(
            text.contains(
                "beskar7_reconcile_total{controller=\"physicalhost\",result=\"success\"} 2"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "beskar7_reconcile_duration_seconds_count{controller=\"physicalhost\"} 2"
            )
        );
        assert!(text.contains("beskar7_reconcile_errors_total{controller=\"physicalhost\",reason=\"BMCUnreachable\"} 1"));
        assert!(text.contains("beskar7_hosts{state=\"Available\"} 3"));
    }
}
