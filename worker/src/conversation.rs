//! The conversation map in Redis: `(source, chat, sender)` -> the Dify `user` and the
//! `conversation_id` of that conversation, with an idle TTL, so context survives worker
//! restarts and every worker process sees the same conversations. Group chats share one
//! conversation or keep one per sender, as the source says. It also holds the per-conversation
//! turn lock: one message of a conversation at a time, so one answer's `conversation_id` is
//! stored before the next message of that conversation is sent — while other conversations go
//! on (no head-of-line blocking).
use deadpool_redis::redis::{AsyncCommands, Script};
use shared::config::GroupConversation;
use shared::envelope::{ChatType, Conversation};
use shared::store::{Store, StoreError};
use std::time::Duration;

/// Which Dify conversation an event belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationKey {
    /// The Redis key of the mapping.
    pub key: String,
    /// The Dify `user`: conversations are scoped to it, so it must be stable.
    pub user: String,
}

/// Decides the conversation of an event (pure).
pub fn conversation_of(
    source: &str,
    conv: &Conversation,
    group: GroupConversation,
    store: &Store,
) -> ConversationKey {
    let shared_group = conv.chat_type == ChatType::Group && group == GroupConversation::Shared;
    let who = if shared_group {
        "*"
    } else {
        conv.sender_id.as_str()
    };
    let mut parts = vec!["conv", source, conv.chat_id.as_str(), who];
    if let Some(t) = &conv.thread_id {
        parts.push(t);
    }
    let user = if shared_group {
        format!("{source}:group:{}", conv.chat_id)
    } else {
        format!("{source}:{}", conv.sender_id)
    };
    ConversationKey {
        key: store.key(&parts),
        user,
    }
}

#[derive(Clone, Debug)]
pub struct Conversations {
    store: Store,
    ttl: Duration,
}

// KEYS[1] lock. ARGV: holder, ttl_ms. Takes the turn, or says how long the holder keeps it.
const TAKE_TURN: &str = r#"
local holder = redis.call('GET', KEYS[1])
if holder == false or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return -1
end
return redis.call('PTTL', KEYS[1])
"#;

// KEYS[1] lock. ARGV: holder, ttl_ms. Extends the turn only if we hold it.
const RENEW_TURN: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"#;

// KEYS[1] lock. ARGV: holder. Gives the turn back only if we hold it.
const END_TURN: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"#;

impl Conversations {
    pub fn new(store: Store, ttl: Duration) -> Self {
        Self { store, ttl }
    }

    /// The stored conversation id, refreshing its idle TTL.
    pub async fn get(&self, key: &ConversationKey) -> Result<Option<String>, StoreError> {
        let mut c = self.store.conn().await?;
        // GETEX reads and refreshes the idle TTL in one round trip.
        let id: Option<String> = deadpool_redis::redis::cmd("GETEX")
            .arg(&key.key)
            .arg("EX")
            .arg(self.ttl.as_secs().max(1))
            .query_async(&mut c)
            .await?;
        Ok(id)
    }

    pub async fn set(
        &self,
        key: &ConversationKey,
        conversation_id: &str,
    ) -> Result<(), StoreError> {
        let mut c = self.store.conn().await?;
        let _: () = c
            .set_ex(&key.key, conversation_id, self.ttl.as_secs().max(1))
            .await?;
        Ok(())
    }

    /// Drops a mapping Dify no longer knows ("Conversation Not Exists").
    pub async fn forget(&self, key: &ConversationKey) -> Result<(), StoreError> {
        let mut c = self.store.conn().await?;
        let _: () = c.del(&key.key).await?;
        Ok(())
    }

    /// Takes the conversation's turn for `holder` (the event id) for at most `ttl`; `Some(wait)`
    /// if another event of the conversation is being answered.
    pub async fn take_turn(
        &self,
        key: &ConversationKey,
        holder: &str,
        ttl: Duration,
    ) -> Result<Option<Duration>, StoreError> {
        let mut c = self.store.conn().await?;
        let pttl: i64 = Script::new(TAKE_TURN)
            .key(format!("{}:turn", key.key))
            .arg(holder)
            .arg(ttl.as_millis() as u64)
            .invoke_async(&mut c)
            .await?;
        Ok((pttl >= 0).then(|| Duration::from_millis(pttl as u64)))
    }

    /// Extends our turn while the call runs (the turn lapses with its holder's lease).
    pub async fn renew_turn(
        &self,
        key: &ConversationKey,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let mut c = self.store.conn().await?;
        let renewed: i64 = Script::new(RENEW_TURN)
            .key(format!("{}:turn", key.key))
            .arg(holder)
            .arg(ttl.as_millis() as u64)
            .invoke_async(&mut c)
            .await?;
        Ok(renewed == 1)
    }

    pub async fn end_turn(&self, key: &ConversationKey, holder: &str) -> Result<(), StoreError> {
        let mut c = self.store.conn().await?;
        let _: i64 = Script::new(END_TURN)
            .key(format!("{}:turn", key.key))
            .arg(holder)
            .invoke_async(&mut c)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> Store {
        Store::new(&shared::config::RedisConfig {
            url: shared::Secret::new("redis://127.0.0.1:6379"),
            prefix: "p".into(),
            pool_size: 1,
            sentinel: None,
        })
        .unwrap()
    }

    fn conv(chat_type: ChatType, sender: &str) -> Conversation {
        Conversation {
            chat_id: "c1".into(),
            chat_type,
            sender_id: sender.into(),
            sender_name: None,
            thread_id: None,
        }
    }

    #[test]
    fn conversation_keys_table() {
        let s = store();
        let k = |c, g| conversation_of("src", &c, g, &s);
        let a = k(conv(ChatType::Single, "u1"), GroupConversation::Shared);
        assert_eq!(
            (a.key.as_str(), a.user.as_str()),
            ("p:conv:src:c1:u1", "src:u1")
        );
        let g1 = k(conv(ChatType::Group, "u1"), GroupConversation::Shared);
        let g2 = k(conv(ChatType::Group, "u2"), GroupConversation::Shared);
        assert_eq!(g1, g2, "a shared group is one conversation");
        assert_eq!(g1.user, "src:group:c1");
        let p1 = k(conv(ChatType::Group, "u1"), GroupConversation::PerSender);
        let p2 = k(conv(ChatType::Group, "u2"), GroupConversation::PerSender);
        assert_ne!(p1, p2, "per-sender groups keep one conversation each");
    }
}
