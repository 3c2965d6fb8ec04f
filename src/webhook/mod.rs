//! Exact webhooks declared in YAML (`ExactWebhookSubscription`): the subscriptions are kept
//! at Exact by [`controller`], and messages arrive at [`receiver`] on the operator's public
//! server, are verified against the app's webhook secret and delivered in the cluster.

pub mod controller;
pub mod crd;
pub mod exact_api;
pub mod link;
pub mod receiver;
