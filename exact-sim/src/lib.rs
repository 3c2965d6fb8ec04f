//! `exact-sim`: a faithful Exact Online OAuth 2.0 / REST simulator.
//!
//! It enforces Exact's real rules: 600 s access tokens with a string `expires_in`,
//! refusal of refreshes outside the 30 s refresh window (`Reason:
//! TooEarlyToRefreshTokens`), refresh-token rotation with "Old refresh token used.",
//! refresh-token expiry, single-use `!`-bearing authorization codes, a per-client error
//! budget that blocks the app for the rest of the hour, client authentication in the
//! form body or by HTTP Basic, one grant per user per app (a new consent revokes the
//! user's older chain), a daily token-call cap per user and app, users with several
//! divisions, `Me` / `hrm/Divisions` / `system/Divisions` / paged `crm/Accounts` with
//! `$select`, REST rate-limit headers and 429s, plus injectable gateway faults (Apigee
//! 500s, empty and non-JSON bodies, lost responses after the token was rotated).
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use exact_sim::{Sim, SimConfig};
//! let cfg = SimConfig::default().with_client("my-client", "my-secret");
//! let sim = Sim::start(cfg, "127.0.0.1:0".parse()?).await?;
//! let refresh_token = sim.seed_connection("my-client", "acme", None);
//! println!("token endpoint: {}", sim.token_url());
//! # let _ = refresh_token;
//! sim.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! Token values are never logged; logs name connections and outcomes only.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod admin;
mod auth;
mod clock;
pub mod config;
pub mod duration;
mod faults;
mod limits;
mod odata;
mod rest;
mod server;
mod state;
pub mod stats;
mod tls;
mod token;
mod webhook_registry;
pub mod webhooks;

pub use config::{Faults, SimClient, SimConfig, SimDivision, SimUser};
pub use duration::{parse_duration, DurationError};
pub use faults::APIGEE_FAULT;
pub use server::Sim;
pub use stats::{ChainStats, Counters, Outcome, Stats};
pub use webhooks::{FireOptions, Fired, Signature, WebhookSubscription};
