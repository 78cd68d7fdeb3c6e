//! Local stand-ins for everything outside Switchboard's control, used by the tests, the quick
//! start and the load harness: a Dify service, webhook receivers, the platforms' outbound APIs,
//! DingTalk's Stream-mode gateway, Slack's Socket Mode, Feishu's long connection, Discord both
//! ways (signed interactions in, its API out), Discord's Gateway (`discord_gateway`) and a TCP
//! proxy that can cut the broker away. They behave like the real services (status
//! codes, errcodes, latency, streaming) and count what they receive. The benchmarks that drive
//! them against the real roles are the `bench` crate (`./dev bench`), not this one.
#![forbid(unsafe_code)]

pub mod dify;
pub mod dingtalk_card;
pub mod discord;
pub mod discord_gateway;
pub mod feishu_card;
pub mod feishu_ws;
pub mod platforms;
pub mod proxy;
pub mod receiver;
pub mod slack_socket;
pub mod stream;
pub mod ws;
