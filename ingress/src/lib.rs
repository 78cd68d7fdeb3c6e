//! The ingress role: verifies inbound webhooks with each platform's own scheme, answers
//! handshakes, and enqueues one `InboundEvent` per user message, answering the platform only
//! once the broker confirmed it. It never calls Dify.
#![forbid(unsafe_code)]

pub mod platform;
