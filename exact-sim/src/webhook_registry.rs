//! The simulator's record of webhook subscriptions (data only: the handlers are in
//! `webhooks`, which sits above `state`).

use serde::Serialize;

/// One subscription as "Exact" keeps it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct WebhookSubscription {
    /// Exact's ID (a GUID).
    pub id: String,
    /// The app the subscription belongs to.
    pub client_id: String,
    /// Division it was created in.
    pub division: i64,
    /// Where messages go.
    pub callback_url: String,
    /// Topic, e.g. `Accounts`.
    pub topic: String,
    /// Status the CallbackURL answered the validation POST with (None: not yet sent or no
    /// answer).
    pub validation_status: Option<u16>,
}

/// Every subscription, in creation order.
#[derive(Debug, Default)]
pub struct Registry {
    pub(crate) subs: Vec<WebhookSubscription>,
}

impl Registry {
    /// All current subscriptions.
    pub fn all(&self) -> Vec<WebhookSubscription> {
        self.subs.clone()
    }

    /// Removes a subscription; false when unknown.
    pub fn remove(&mut self, id: &str) -> bool {
        let before = self.subs.len();
        self.subs.retain(|s| !s.id.eq_ignore_ascii_case(id));
        self.subs.len() != before
    }

    pub(crate) fn get(&self, id: &str) -> Option<&WebhookSubscription> {
        self.subs.iter().find(|s| s.id.eq_ignore_ascii_case(id))
    }
}
