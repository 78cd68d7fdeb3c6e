//! End-to-end tests: the real roles in-process (or as child processes where a test kills one)
//! against the real RabbitMQ and Redis, with local stand-ins for Dify and the receivers. Every
//! test has its own queue and key prefix and removes them when it ends.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod common;
mod connectors;
mod crash;
mod discord;
mod discord_gateway;
mod door;
mod feishu_ws;
mod forged;
mod gateways;
mod hardening;
mod harness;
mod json_hooks;
mod kit;
mod limits;
mod pipeline;
mod platforms;
mod schedules;
mod secrets;
mod slack_socket;
mod slack_stream;
mod stream_kit;
mod streaming;
mod streaming_dingtalk;
mod streaming_feishu;
mod targets;
mod tls;
mod worker;
