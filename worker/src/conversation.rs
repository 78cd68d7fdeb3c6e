//! The conversation map in Redis: `(source, chat, sender)` -> the Dify `user` and the
//! `conversation_id` of that conversation, with an idle TTL, so context survives worker
//! restarts and every worker process sees the same conversations. Group chats share one
//! conversation or keep one per sender, as the source says. It also holds the per-conversation
//! turn lock: one message of a conversation at a time, so one answer's `conversation_id` is
//! stored before the next message of that conversation is sent — while other conversations go
//! on (no head-of-line blocking). Chat, sender and thread ids are the sender's to choose: every
//! key and the Dify `user` are built from encoded parts (`shared::store::key_part`), and the turn
//! lock lives under its own `turn:` name rather than as a suffix of the mapping's key, so no id
//! can name another conversation's mapping or lock. The turn is taken with the event's claim,
//! and ended with its answer, in `crate::hold`'s scripts.
use deadpool_redis::redis::{AsyncCommands, Script};
use shared::config::GroupConversation;
use shared::envelope::{ChatType, Conversation};
use shared::store::{join_parts, key_part, Store, StoreError};
use std::sync::LazyLock;
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

/// The turn lock as Lua functions, for the scripts of `crate::hold` (which take and end a turn
/// in the same script as the event's claim and its answer). The holder is the claim's token.
pub(crate) const TURN_LUA: &str = r#"
-- How long another holder keeps the turn; nil if it is free or `holder`'s.
local function turn_busy(lock, holder)
  local h = redis.call('GET', lock)
  if h == false or h == holder then
    return nil
  end
  local ms = redis.call('PTTL', lock)
  if ms < 0 then
    ms = 1000
  end
  return ms
end

local function take_turn(lock, holder, ttl_ms)
  redis.call('SET', lock, holder, 'PX', ttl_ms)
end

-- Gives the turn back only if `holder` holds it.
local function end_turn(lock, holder)
  if redis.call('GET', lock) == holder then
    return redis.call('DEL', lock)
  end
  return 0
end
"#;

// KEYS[1] lock. ARGV: holder, ttl_ms. Extends the turn only if we hold it.
static RENEW_TURN: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"#,
    )
});

impl Conversations {
    pub fn new(store: Store, ttl: Duration) -> Self {
        Self { store, ttl }
    }

    /// How long an idle conversation is kept.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Drops a mapping Dify no longer knows ("Conversation Not Exists").
    pub async fn forget(&self, key: &ConversationKey) -> Result<(), StoreError> {
        let mut c = self.store.conn().await?;
        let _: () = c.del(&key.key).await?;
        Ok(())
    }

    /// Extends our turn while the call runs (the turn lapses with its holder's lease).
    pub async fn renew_turn(
        &self,
        key: &ConversationKey,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let mut c = self.store.conn().await?;
        let renewed: i64 = RENEW_TURN
            .key(&key.turn)
            .arg(holder)
            .arg(ttl.as_millis() as u64)
            .invoke_async(&mut c)
            .await?;
        Ok(renewed == 1)
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
