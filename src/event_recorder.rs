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

/// Publishes Events through a recorder renewed every [`RECORDER_LIFE`] (the old one's
/// cache goes with it); a repeat across a renewal starts a new Event instead of a series.
pub struct Events {
    client: kube::Client,
    reporter: Reporter,
    current: Mutex<(Recorder, Instant)>,
}

impl Events {
    /// Events published as `reporter`.
    pub fn new(client: kube::Client, reporter: Reporter) -> Self {
        let recorder = Recorder::new(client.clone(), reporter.clone());
        Events {
            client,
            reporter,
            current: Mutex::new((recorder, Instant::now())),
        }
    }

    /// Publishes `ev` about the object `reference`.
    pub async fn publish(
        &self,
        ev: &Event,
        reference: &ObjectReference,
    ) -> Result<(), kube::Error> {
        let Some(recorder) = self.recorder() else {
            return Ok(());
        };
        recorder.publish(ev, reference).await
    }

    /// Drops the recorder's cache once it is older than [`RECORDER_LIFE`] (called from
    /// every reconcile, so the cache also goes when no Event is published any more).
    pub fn forget_old(&self) {
        let _ = self.recorder();
    }

    fn recorder(&self) -> Option<Recorder> {
        let mut current = self.current.lock().ok()?;
        if current.1.elapsed() >= RECORDER_LIFE {
            *current = (
                Recorder::new(self.client.clone(), self.reporter.clone()),
                Instant::now(),
            );
        }
        Some(current.0.clone())
    }
}
