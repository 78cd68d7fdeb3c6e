//! The `switchboard` binary as an operator meets it: `config check` on the configs we ship,
//! errors that name the key and never echo a secret, and `topology` against the real broker.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use std::process::Command;

fn switchboard(args: &[&str], envs: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchboard"));
    cmd.args(args).env_remove("SWITCHBOARD_CONFIG");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run switchboard");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A config with the broker, Redis and one app, for the sources a test appends.
const APP_ONLY: &str = r#"
[broker]
url = "amqp://guest:guest@127.0.0.1:5672/%2f"
[redis]
url = "redis://127.0.0.1:6379"
[[apps]]
id = "a"
base_url = "http://127.0.0.1:1/v1"
api_key = "app-x"
kind = "chat"
"#;

/// `config check` of a config written to a fresh temporary file (removed afterwards).
fn config_check(text: &str) -> (i32, String, String) {
    let dir = std::env::temp_dir().join(format!("sb-cli-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("config.toml");
    std::fs::write(&path, text).unwrap();
    let result = switchboard(
        &["--config", path.to_str().unwrap(), "config", "check"],
        &[],
    );
    std::fs::remove_dir_all(dir).unwrap();
    result
}

#[test]
fn the_shipped_configs_pass_config_check() {
    let (code, out, err) = switchboard(
        &["--config", "deploy/quickstart.toml", "config", "check"],
        &[("DIFY_API_KEY", "app-x")],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("ok (1 sources, 1 apps, 1 targets)"), "{out}");
    let secrets = [
        ("SWITCHBOARD_AMQP_URL", "amqp://u:p@127.0.0.1:5672/%2f"),
        ("SWITCHBOARD_REDIS_URL", "redis://127.0.0.1:6379"),
        ("DIFY_SUPPORT_KEY", "app-1"),
        ("WECOM_TOKEN", "QDG6eK"),
        (
            "WECOM_AES_KEY",
            "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C",
        ),
        ("WECOM_CORP_SECRET", "corp-secret"),
        ("CRM_TOKEN", "crm"),
        (
            "CRM_WEBHOOK_SECRET",
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        ),
        (
            "CRM_WEBHOOK_SECRET_OLD",
            "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
        ),
        ("OPS_ROBOT_KEY", "robot-key"),
        ("DISCORD_BOT_TOKEN", "discord-bot-token"),
        (
            "SWITCHBOARD_REDIS_KEY",
            "example-redis-key-0123456789abcdef0123456789",
        ),
        (
            "SWITCHBOARD_AUDIT_KEY",
            "example-audit-key-0123456789abcdef0123456789",
        ),
        (
            "CONSOLE_ALICE_HASH",
            "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
        ),
    ];
    let (code, out, err) = switchboard(
        &[
            "--config",
            "deploy/switchboard.example.toml",
            "config",
            "check",
        ],
        &secrets,
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(!err.contains("warning"), "{err}");
}

/// Without `redis.encryption_key` the config passes with a warning (the quick start runs);
/// a key too short, or old keys without a current one, are refused without being echoed.
#[test]
fn config_check_warns_without_an_encryption_key_and_refuses_a_short_one() {
    let (code, out, err) = switchboard(
        &["--config", "deploy/quickstart.toml", "config", "check"],
        &[("DIFY_API_KEY", "app-x")],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        err.contains("warning: redis.encryption_key is not set"),
        "{err}"
    );
    let with = |lines: &str| APP_ONLY.replace("[[apps]]", &format!("{lines}\n[[apps]]"));
    let (code, out, err) = config_check(&with(
        "encryption_key = \"0123456789abcdef0123456789abcdef\"",
    ));
    assert_eq!(code, 0, "{out}{err}");
    assert!(!err.contains("warning"), "{err}");
    let (code, _, err) = config_check(&with("encryption_key = \"short-secret-key\""));
    assert_eq!(code, 2);
    assert!(err.contains("redis.encryption_key"), "{err}");
    assert!(!err.contains("short-secret-key"), "{err}");
    let (code, _, err) = config_check(&with(
        "previous_encryption_keys = [\"0123456789abcdef0123456789abcdef\"]",
    ));
    assert_eq!(code, 2);
    assert!(err.contains("redis.previous_encryption_keys"), "{err}");
}

#[test]
fn a_broken_config_names_every_key_and_echoes_no_secret() {
    let (code, out, err) = config_check(
        r#"
[broker]
url = "amqp://guest:hunter2@127.0.0.1:5672/%2f"
[redis]
url = "redis://127.0.0.1:6379"
[[apps]]
id = "a"
base_url = "http://127.0.0.1:1/v1"
api_key = "app-topsecret"
kind = "chat"
[[sources]]
id = "w"
platform = "wecom"
token = "tok-topsecret"
encoding_aes_key = "tooshort"
receive_id = "corp"
app = "a"
targets = ["nowhere"]
[[sources]]
id = "s"
platform = "slak"
app = "a"
"#,
    );
    assert_eq!(code, 2, "{out}{err}");
    for key in [
        "sources.w.targets",
        "sources.w.encoding_aes_key",
        "sources.s.platform",
    ] {
        assert!(err.contains(key), "the error names {key}: {err}");
    }
    for secret in ["hunter2", "app-topsecret", "tok-topsecret", "tooshort"] {
        assert!(
            !err.contains(secret) && !out.contains(secret),
            "{secret} leaked: {err}"
        );
    }
    let missing = std::env::temp_dir().join(format!("sb-cli-{}.toml", uuid::Uuid::now_v7()));
    let (code, _, err) = switchboard(
        &["--config", missing.to_str().unwrap(), "config", "check"],
        &[],
    );
    assert_eq!(code, 2);
    assert!(err.contains("no config file"), "{err}");
}

#[test]
fn a_missing_secret_reference_is_named() {
    let (code, _, err) = switchboard(
        &["--config", "deploy/quickstart.toml", "config", "check"],
        &[("DIFY_API_KEY", "")],
    );
    assert_eq!(code, 2);
    assert!(err.contains("api_key"), "{err}");
}

/// A source block is read by two roles: the ingress (the platform's keys) and the dispatcher
/// (the reply channel's). `config check` accepts the keys either declares, and only those.
#[test]
fn a_source_block_holds_its_platform_and_reply_keys_and_nothing_else() {
    let (code, out, err) = config_check(&format!(
        r#"{APP_ONLY}[[sources]]
id = "sl"
platform = "slack"
signing_secret = "s"
bot_user_id = "U1"
bot_token = "xoxb-1"
api_base = "https://slack.example.com/api"
app = "a"
reply = true
[[sources]]
id = "typo"
platform = "slack"
signing_secret = "s"
bot_tokn = "xoxb-1"
app = "a"
[[sources]]
id = "crm"
platform = "bearer"
token = "t"
bot_token = "xoxb-1"
app = "a"
"#
    ));
    assert_eq!(code, 2, "{out}{err}");
    let named: Vec<&str> = err
        .lines()
        .filter_map(|l| l.trim().trim_start_matches("- ").split(':').next())
        .filter(|k| k.starts_with("sources."))
        .collect();
    assert_eq!(
        named,
        ["sources.typo.bot_tokn", "sources.crm.bot_token"],
        "{err}"
    );
    assert!(
        err.contains("known: signing_secret, bot_user_id, bot_token, api_base"),
        "the message lists both roles' keys: {err}"
    );
}

/// Feishu without an encrypt key signs nothing: `config check` refuses such a source unless it
/// says, in a key named for it, that it accepts unsigned events.
#[test]
fn a_feishu_source_without_an_encrypt_key_must_say_it_accepts_unsigned_events() {
    let config = |extra: &str| {
        format!(
            r#"{APP_ONLY}[[sources]]
id = "fs"
platform = "feishu"
verification_token = "v-token"
app = "a"
{extra}
"#
        )
    };
    let (code, out, err) = config_check(&config(""));
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("sources.fs.encrypt_key: is required"), "{err}");
    assert!(
        err.contains("allow_unsigned = true"),
        "the way out is named: {err}"
    );
    let (code, out, err) = config_check(&config("allow_unsigned = true"));
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = config_check(&config("encrypt_key = \"k\""));
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn the_auditors_commands_need_none_of_the_platforms_secrets() {
    // The Dify key and the platform token reference variables that are not set: the roles
    // could not load this config, the auditors' commands only read what they need.
    let prefix = format!("sbt-cli-{}", uuid::Uuid::now_v7().simple());
    let dir = std::env::temp_dir().join(&prefix);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("config.toml");
    std::fs::write(
        &path,
        format!(
            "[broker]\nurl = \"amqp://guest:guest@127.0.0.1:5672/%2f\"\nprefix = \"{prefix}\"\n[redis]\nurl = \"redis://127.0.0.1:6379\"\n[[apps]]\nid = \"a\"\nbase_url = \"http://127.0.0.1:1/v1\"\napi_key = \"env:SB_CLI_SURELY_UNSET_DIFY\"\nkind = \"chat\"\n[[sources]]\nid = \"s\"\nplatform = \"bearer\"\ntoken = \"env:SB_CLI_SURELY_UNSET_TOKEN\"\napp = \"a\"\n"
        ),
    )
    .unwrap();
    let config = path.to_str().unwrap();
    let (code, _, err) = switchboard(&["--config", config, "worker"], &[]);
    assert_eq!(code, 2, "the roles need every secret: {err}");
    assert!(err.contains("SB_CLI_SURELY_UNSET_DIFY"), "{err}");
    // No store under this prefix: the broker answers, not the config loader.
    let (code, _, err) = switchboard(&["--config", config, "dlq", "list"], &[]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("there is no"), "{err}");
    let (code, out, err) = switchboard(&["console", "new-token"], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("sbt_") && out.contains("sha256"), "{out}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn config_check_explains_a_bad_cron_zone_or_template() {
    let (code, _, err) = config_check(&format!(
        r#"{APP_ONLY}
[[schedules]]
id = "briefing"
cron = "0 8 * *"
timezone = "Asia/Shangai"
app = "a"
inputs = {{ day = "{{{{ dat }}}}" }}

[[schedules]]
id = "ok"
cron = "0 25 * * *"
app = "a"

[[targets]]
id = "shaped"
kind = "webhook"
url = "https://example.com/in"
secret = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"
template = '{{"a": {{{{ answer }}'
"#
    ));
    assert_eq!(code, 2, "{err}");
    for expected in [
        "schedules.briefing.cron: `0 8 * *` has 4 fields",
        "schedules.briefing.timezone: `Asia/Shangai` is not an IANA time zone name",
        "schedules.ok.cron: `0 25 * * *` is not a cron expression",
        "targets.shaped.template: the template does not compile",
    ] {
        assert!(err.contains(expected), "{expected}\n{err}");
    }
}
