//! Local stand-ins for everything outside Switchboard's control, used by the tests, the quick
//! start and the load harness: a Dify service, webhook receivers, the platforms' outbound APIs,
//! and a TCP proxy that can cut the broker away. They behave like the real services (status
//! codes, errcodes, latency, streaming) and count what they receive. `bench` holds the
//! benchmarks that drive them against the real roles (`./dev bench`).
#![forbid(unsafe_code)]

pub mod bench;
pub mod dify;
pub mod platforms;
pub mod proxy;
pub mod receiver;
