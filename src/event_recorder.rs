//! The Event recorder, renewed so that its cache does not outlive its use.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, Recorder, Reporter};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long one recorder (and so its cache of published Events) is used: kube's recorder
/// keeps every Event it published for 6 minutes, to count repeats as a series, and prunes
/// only when it publishes again, so after a cold start of 10,000 connections (one Event
/// each) and no Event since, all 10,000 stayed in memory (~3 KB each).
const RECORDER_LIFE: Duration = Duration::from_secs(360);

/// How many Events one recorder publishes before it is renewed. Its cache holds every
/// Event it published (~2.4 KB each) and it scans all of them on each publish, so a cold
/// start of 10,000 connections (one Event each, within minutes) measured 23.6 MB of peak
/// heap in that cache alone, and N publishes cost N^2/2 scans.
const RECORDER_EVENTS: u32 = 256;

/// Publishes Events through a recorder renewed every [`RECORDER_LIFE`] or
/// [`RECORDER_EVENTS`] Events (the old one's cache goes with it); a repeat across a
/// renewal starts a new Event instead of counting in the old one's series.
pub struct Events {
    client: kube::Client,
    reporter: Reporter,
    current: Mutex<Current>,
}

/// The recorder in use, when it was made, and how many Events it published.
struct Current {
    recorder: Recorder,
    since: Instant,
    published: u32,
}

impl Current {
    fn worn_out(&self) -> bool {
        worn_out(self.since.elapsed(), self.published)
    }
}

/// Whether a recorder this old that published this many Events is to be renewed.
fn worn_out(age: Duration, published: u32) -> bool {
    age >= RECORDER_LIFE || published >= RECORDER_EVENTS
}

impl Events {
    /// Events published as `reporter`.
    pub fn new(client: kube::Client, reporter: Reporter) -> Self {
        let recorder = Recorder::new(client.clone(), reporter.clone());
        Events {
            client,
            reporter,
            current: Mutex::new(Current {
                recorder,
                since: Instant::now(),
                published: 0,
            }),
        }
    }

    /// Publishes `ev` about the object `reference`.
    pub async fn publish(
        &self,
        ev: &Event,
        reference: &ObjectReference,
    ) -> Result<(), kube::Error> {
        let Some(recorder) = self.recorder(1) else {
            return Ok(());
        };
        recorder.publish(ev, reference).await
    }

    /// Drops the recorder's cache once it is older than [`RECORDER_LIFE`] (called from
    /// every reconcile, so the cache also goes when no Event is published any more).
    pub fn forget_old(&self) {
        let _ = self.recorder(0);
    }

    /// The recorder to use for `publishing` more Events (a new one once worn out).
    fn recorder(&self, publishing: u32) -> Option<Recorder> {
        let mut current = self.current.lock().ok()?;
        if current.worn_out() {
            *current = Current {
                recorder: Recorder::new(self.client.clone(), self.reporter.clone()),
                since: Instant::now(),
                published: 0,
            };
        }
        current.published = current.published.saturating_add(publishing);
        Some(current.recorder.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recorder_is_renewed_by_age_or_by_events_published() {
        assert!(!worn_out(Duration::ZERO, 0));
        assert!(!worn_out(
            RECORDER_LIFE - Duration::from_secs(1),
            RECORDER_EVENTS - 1
        ));
        assert!(worn_out(RECORDER_LIFE, 0));
        // A cold start publishing thousands of Events within the life still renews.
        assert!(worn_out(Duration::from_secs(5), RECORDER_EVENTS));
    }
}
