//! An event's hold in Redis on the normal path, each step one script and so one round trip:
//! [`Holds::begin`] claims the event's record (or finds its answer, or a live lease), takes its
//! conversation's turn and reads the conversation's id; [`Holds::finish`] stores the
//! conversation id Dify answered in, records the answer and ends the turn — the id is stored
//! before the turn is given back, in the same step, so the conversation's next message continues
//! it; [`Holds::let_go`] gives back both (before calling, or after a failed call). With Dify's
//! ids recorded once during the call (`Idempotency::record_ids`), an answered event costs three
//! round trips.
//!
//! A claim whose reply is lost (a response timeout, a broken connection: Redis may have run it)
//! is given back at once, on the same connection, by the token the worker made for it: Redis
//! runs commands of one connection in order, so the give-back runs after the claim if the claim
//! ran at all, and the event is free again instead of held by this worker for a whole lease.
//! The scripts are the record's and the turn's Lua functions (`idempotency`, `conversation`)
//! put together, so each rule is written once.
use crate::conversation::{ConversationKey, Conversations, TURN_LUA};
use crate::idempotency::{script, Claim, Idempotency, RECORD_LUA};
use deadpool_redis::redis::{Script, ScriptInvocation};
use shared::envelope::Answer;
use shared::store::StoreError;
use std::sync::LazyLock;
use std::time::Duration;
use uuid::Uuid;

/// What a worker holds of an event: the claim on its record and its conversation's turn.
#[derive(Debug, Clone)]
pub struct Held {
    /// The record's key.
    pub key: String,
    /// The record's fencing token (also the epoch of a streamed reply's updates).
    pub token: i64,
    /// The token this worker made for the claim; it also holds the turn.
    pub claimant: String,
    /// The event the claim is for (recorded with its answer).
    pub event_id: Uuid,
    pub conv: ConversationKey,
}

/// What [`Holds::begin`] found.
#[derive(Debug, Clone, PartialEq)]
pub struct Begun {
    /// `Acquired`: the claim and the turn are this worker's. `Busy`: the conversation's turn is
    /// another event's, and nothing was taken. Else what the record says.
    pub claim: Claim,
    /// The conversation's Dify id, when the claim was acquired and the conversation is known.
    pub conversation_id: Option<String>,
}

// KEYS: record, turn lock, conversation. ARGV: claimant, lease_ms, answer_ttl_ms,
// conversation_ttl_s. The turn lasts as long as the lease and is renewed with it, so a dead
// worker's turn lapses with its claim.
static BEGIN: LazyLock<Script> = LazyLock::new(|| {
    script(&[
        RECORD_LUA,
        TURN_LUA,
        r#"
local claimed = claim(KEYS[1], ARGV[1], ARGV[2], ARGV[3], function()
  local busy = turn_busy(KEYS[2], ARGV[1])
  if busy then
    return {'busy', tostring(busy)}
  end
end)
if claimed[1] ~= 'acquired' then
  return claimed
end
take_turn(KEYS[2], ARGV[1], ARGV[2])
claimed[5] = redis.call('GETEX', KEYS[3], 'EX', ARGV[4]) or ''
return claimed
"#,
    ])
});

// KEYS: record, turn lock, conversation. ARGV: token, answer, answer_ttl_ms, event id,
// claimant, conversation id ('' if none), conversation_ttl_s.
static FINISH: LazyLock<Script> = LazyLock::new(|| {
    script(&[
        RECORD_LUA,
        TURN_LUA,
        r#"
if ARGV[6] ~= '' then
  redis.call('SET', KEYS[3], ARGV[6], 'EX', ARGV[7])
end
local recorded = complete(KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4])
end_turn(KEYS[2], ARGV[5])
return recorded
"#,
    ])
});

// KEYS: record, turn lock. ARGV: 'token' or 'owner', its value, clear, claimant.
static LET_GO: LazyLock<Script> = LazyLock::new(|| {
    script(&[
        RECORD_LUA,
        TURN_LUA,
        r#"
local given = give_back(KEYS[1], ARGV[1], ARGV[2], ARGV[3])
end_turn(KEYS[2], ARGV[4])
return given
"#,
    ])
});

/// The scripts of one worker process's holds.
#[derive(Clone, Debug)]
pub struct Holds {
    idem: Idempotency,
    conversation_ttl: Duration,
}

impl Holds {
    pub fn new(idem: Idempotency, conversations: &Conversations) -> Self {
        Self {
            idem,
            conversation_ttl: conversations.ttl(),
        }
    }

    /// Claims the record `key` for `claimant` (made by `Idempotency::claimant`), takes the turn
    /// of `conv` and reads its conversation id, in one round trip. When the reply is lost, what
    /// the claim may have taken is given back on the same connection before the error returns.
    pub async fn begin(
        &self,
        key: &str,
        conv: &ConversationKey,
        claimant: &str,
    ) -> Result<Begun, StoreError> {
        let mut conn = self.idem.store().conn().await?;
        let lease_ms = self.idem.lease().as_millis() as u64;
        let reply: Result<Vec<String>, _> = BEGIN
            .key(key)
            .key(&conv.turn)
            .key(&conv.key)
            .arg(claimant)
            .arg(lease_ms)
            .arg(self.idem.answer_ttl().as_millis() as u64)
            .arg(self.conversation_ttl.as_secs().max(1))
            .invoke_async(&mut conn)
            .await;
        let reply = match reply {
            Ok(reply) => reply,
            Err(e) => {
                let given_back: Result<i64, _> =
                    let_go_invocation(key, conv, "owner", claimant, false, claimant)
                        .invoke_async(&mut conn)
                        .await;
                match given_back {
                    Ok(n) => {
                        tracing::warn!(error = %e, given_back = n == 1, "a claim's reply was lost; gave back what it took")
                    }
                    Err(again) => {
                        tracing::warn!(error = %e, again = %again, "a claim's reply was lost, and so was its give-back: the lease lapses by itself")
                    }
                }
                return Err(e.into());
            }
        };
        let claim = self.idem.parse_claim(key, &reply);
        let conversation_id = match claim {
            Claim::Acquired { .. } => reply.get(4).filter(|c| !c.is_empty()).cloned(),
            _ => None,
        };
        Ok(Begun {
            claim,
            conversation_id,
        })
    }

    /// Stores the conversation id Dify answered in, records `answer` under the claim and ends
    /// the turn, in one round trip; false if the lease was lost before (the answer is not
    /// recorded; the conversation id is, and the turn is ended if still ours).
    pub async fn finish(&self, held: &Held, answer: &Answer) -> Result<bool, StoreError> {
        let mut conn = self.idem.store().conn().await?;
        let recorded: i64 = FINISH
            .key(&held.key)
            .key(&held.conv.turn)
            .key(&held.conv.key)
            .arg(held.token)
            .arg(self.idem.sealed(&held.key, answer))
            .arg(self.idem.answer_ttl().as_millis() as u64)
            .arg(held.event_id.to_string())
            .arg(&held.claimant)
            .arg(answer.conversation_id.as_deref().unwrap_or_default())
            .arg(self.conversation_ttl.as_secs().max(1))
            .invoke_async(&mut conn)
            .await?;
        Ok(recorded == 1)
    }

    /// Gives back the claim and the turn: before calling Dify (`failed` false: ids a previous
    /// owner recorded are kept for the next claim), or after a failed call or an event given up
    /// (`failed`: the run's ids and the deaths counted are cleared).
    pub async fn let_go(&self, held: &Held, failed: bool) -> Result<bool, StoreError> {
        let mut conn = self.idem.store().conn().await?;
        let given: i64 = let_go_invocation(
            &held.key,
            &held.conv,
            "token",
            &held.token.to_string(),
            failed,
            &held.claimant,
        )
        .invoke_async(&mut conn)
        .await?;
        Ok(given == 1)
    }
}

/// The give-back of the record `key` (if its `field` is `value`) and of `conv`'s turn (if
/// `claimant` holds it).
fn let_go_invocation(
    key: &str,
    conv: &ConversationKey,
    field: &str,
    value: &str,
    failed: bool,
    claimant: &str,
) -> ScriptInvocation<'static> {
    let mut inv = LET_GO.prepare_invoke();
    inv.key(key)
        .key(&conv.turn)
        .arg(field)
        .arg(value)
        .arg(if failed { "1" } else { "0" })
        .arg(claimant);
    inv
}
