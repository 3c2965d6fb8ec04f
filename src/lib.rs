//! exact-operator: keeps Exact Online OAuth 2.0 connections alive for Kubernetes workloads.
#![forbid(unsafe_code)]

pub mod agent;
pub mod budget;
pub mod cache;
pub mod chain;
pub mod conditions;
pub mod consent;
pub mod context;
pub mod controller;
pub mod crd;
pub mod divisions;
pub mod duration;
pub mod endpoints;
pub mod event_recorder;
pub mod events;
pub mod http;
pub mod identity;
pub mod journal;
pub mod leader;
pub mod metrics;
pub mod nudge;
pub mod oauth;
pub mod packed_secrets;
pub mod plugin;
pub mod publish;
pub mod resolve;
pub mod schedule;
pub mod secrets;
pub mod shard;
pub mod startup;
pub mod state;
pub mod state_store;
pub mod template;
pub mod token;
pub mod user_index;
pub mod webhook;
