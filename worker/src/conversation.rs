//! The conversation map in Redis: `(source, chat, sender)` -> the Dify `user` and the
//! `conversation_id` of that conversation, with an idle TTL, so context survives worker
//! restarts and every worker process sees the same conversations. Group chats share one
//! conversation or keep one per sender, as the source says. It also holds the per-conversation
//! turn lock: one message of a conversation at a time, so one answer's `conversation_id` is
//! stored before the next message of that conversation is sent — while other conversations go
//! on (no head-of-line blocking). Chat, sender and thread ids are the sender's to choose: every
//! key and the Dify `user` are built from encoded parts (`shared::store::key_part`), and the turn
//! lock lives under its own `turn:` name rather than as a suffix of the mapping's key, so no id
//! can name another conversation's mapping or lock.
use deadpool_redis::redis::{AsyncCommands, Script};
use shared::config::GroupConversation;
use shared::envelope::{ChatType, Conversation};
use shared::store::{join_parts, key_part, Store, StoreError};
use std::time::Duration;

/// Which Dify conversation an event belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationKey {
    /// The Redis key of the mapping.
    pub key: String,
    /// The Redis key of the conversation's turn lock.
    pub turn: String,
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
    let user = if shared_group {
        join_parts(&[source, "group", &conv.chat_id])
    } else {
        join_parts(&[source, &conv.sender_id])
    };
    let name = |kind: &str| {
        let mut k = store.key(&[kind, source, &conv.chat_id]);
        k.push(':');
        // `*` (every sender of a shared group) is written as it is: no sender id encodes to it
        // (`key_part` escapes `*`), so it is ours alone.
        if shared_group {
            k.push('*');
        } else {
            k.push_str(&key_part(&conv.sender_id));
        }
        if let Some(t) = &conv.thread_id {
            k.push(':');
            k.push_str(&key_part(t));
        }
        k
    };
    ConversationKey {
        key: name("conv"),
        turn: name("turn"),
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
            .key(&key.turn)
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
            .key(&key.turn)
            .arg(holder)
            .arg(ttl.as_millis() as u64)
            .invoke_async(&mut c)
            .await?;
        Ok(renewed == 1)
    }

    pub async fn end_turn(&self, key: &ConversationKey, holder: &str) -> Result<(), StoreError> {
        let mut c = self.store.conn().await?;
        let _: i64 = Script::new(END_TURN)
            .key(&key.turn)
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
            response_timeout: std::time::Duration::from_secs(5),
            sentinel: None,
            encryption_key: None,
            previous_encryption_keys: Vec::new(),
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
        assert_eq!(a.turn, "p:turn:src:c1:u1");
        assert_eq!(g1.key, "p:conv:src:c1:*", "the name earlier versions gave");
    }

    /// Issue 11 item 4: ids the sender chooses cannot name another conversation's mapping or
    /// lock, nor its Dify user.
    #[test]
    fn ids_cannot_name_another_conversation() {
        let s = store();
        let with = |chat: &str, sender: &str, thread: Option<&str>, chat_type| {
            let c = Conversation {
                chat_id: chat.into(),
                chat_type,
                sender_id: sender.into(),
                sender_name: None,
                thread_id: thread.map(Into::into),
            };
            conversation_of("src", &c, GroupConversation::Shared, &s)
        };
        let single = ChatType::Single;
        // "a:b"/"c" vs "a"/"b:c".
        let x = with("a:b", "c", None, single);
        let y = with("a", "b:c", None, single);
        assert_ne!(x.key, y.key);
        assert_ne!(x.turn, y.turn);
        // A sender `victim:turn`, or a thread named `turn`, meets no lock of the victim's.
        let victim = with("c1", "victim", None, single);
        let every = [
            with("c1", "victim:turn", None, single),
            with("c1", "victim", Some("turn"), single),
            with("c1:victim", "turn", None, single),
        ];
        for attacker in &every {
            for k in [&attacker.key, &attacker.turn] {
                assert_ne!(k, &victim.turn, "{attacker:?}");
                assert_ne!(k, &victim.key, "{attacker:?}");
            }
        }
        // A sender `*` is not the shared group, nor is a sender `group:c1` its Dify user.
        let group = with("c1", "u1", None, ChatType::Group);
        let star = with("c1", "*", None, single);
        assert_ne!(star.key, group.key);
        assert_ne!(star.turn, group.turn);
        assert_ne!(with("x", "group:c1", None, single).user, group.user);
        // Ordinary ids give the names earlier versions gave (the stored mappings are found).
        assert_eq!(victim.key, "p:conv:src:c1:victim");
        assert_eq!(
            (victim.user.as_str(), group.user.as_str()),
            ("src:victim", "src:group:c1")
        );
    }
}
