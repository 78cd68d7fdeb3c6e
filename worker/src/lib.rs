//! The worker role: consumes `InboundEvent`s, calls the source's Dify app at most once per event
//! (idempotency records and leases in Redis), keeps each conversation's Dify context, and
//! publishes one `DispatchJob` per destination. Transient failures wait in delay queues;
//! permanent ones become dead letters.
#![forbid(unsafe_code)]

pub mod dify;
