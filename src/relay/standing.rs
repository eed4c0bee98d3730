//! Whether a device may still use the relay: asked of the cloud (which alone knows about
//! revocations) and remembered for [`STANDING_FOR`]. A relay inside a cloud process asks
//! its store; a relay on its own asks `POST /relay/standing` ([`CloudStandings`]). When the
//! cloud cannot be reached the relay goes by the ticket alone, whose life is short: a
//! relay that cannot ask must not cut off every device.

use crate::proto::{Claims, Standing, StandingRequest};
use lru::LruCache;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long an answer is trusted; a listening device is asked about as often.
pub const STANDING_FOR: Duration = Duration::from_secs(30);
/// Devices whose answers are remembered.
const REMEMBERED: NonZeroUsize = NonZeroUsize::new(65_536).unwrap();

/// Why the cloud gave no answer about a device.
#[derive(Debug, thiserror::Error)]
pub enum AskError {
    #[error("the cloud could not be reached")]
    Unreachable(#[source] reqwest::Error),
    #[error("the cloud answered {status}")]
    Status { status: u16 },
    #[error("the cloud's answer is not valid")]
    Malformed(#[source] reqwest::Error),
    #[error("the cloud's keys are unusable")]
    UnusableKeys(#[source] crate::crypto::ticket::TicketError),
    #[error("the cloud's store")]
    Store(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Who tells the relay whether a device is in good standing.
#[async_trait::async_trait]
pub trait Standings: Send + Sync {
    /// `Ok(false)` for a device revoked or unknown, or a ticket the cloud refuses.
    async fn active(&self, relay_ticket: &str, claims: &Claims) -> Result<bool, AskError>;
}

/// The cloud's answer over HTTPS.
pub struct CloudStandings {
    pub http: reqwest::Client,
    /// `https://cloud/relay/standing`.
    pub url: reqwest::Url,
}

#[async_trait::async_trait]
impl Standings for CloudStandings {
    async fn active(&self, relay_ticket: &str, claims: &Claims) -> Result<bool, AskError> {
        let body = StandingRequest {
            relay_ticket: relay_ticket.to_string(),
        };
        let res = self
            .http
            .post(self.url.clone())
            .json(&body)
            .send()
            .await
            .map_err(AskError::Unreachable)?;
        let status = res.status();
        if status.is_client_error() {
            // The cloud refuses the ticket (a key dropped, a forged ticket got this far).
            return Ok(false);
        }
        if !status.is_success() {
            return Err(AskError::Status {
                status: status.as_u16(),
            });
        }
        let standing: Standing = res.json().await.map_err(AskError::Malformed)?;
        Ok(standing.active && standing.device == claims.dev)
    }
}

/// The answers of a [`Standings`], remembered per device.
pub(super) struct Remembered {
    ask: Arc<dyn Standings>,
    answers: Mutex<LruCache<String, (bool, Instant)>>,
}

impl Remembered {
    pub(super) fn new(ask: Arc<dyn Standings>) -> Self {
        Self {
            ask,
            answers: Mutex::new(LruCache::new(REMEMBERED)),
        }
    }

    /// Whether the device `claims` names may use the relay, from an answer younger than
    /// [`STANDING_FOR`] or a new one.
    pub(super) async fn active(&self, relay_ticket: &str, claims: &Claims) -> bool {
        let known = self
            .answers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&claims.dev)
            .filter(|(_, at)| at.elapsed() < STANDING_FOR)
            .map(|(active, _)| *active);
        match known {
            Some(active) => active,
            None => self.ask_again(relay_ticket, claims).await,
        }
    }

    /// Whether the device `claims` names may use the relay, asked of the cloud now (and
    /// remembered).
    pub(super) async fn ask_again(&self, relay_ticket: &str, claims: &Claims) -> bool {
        match self.ask.active(relay_ticket, claims).await {
            Ok(active) => {
                self.answers
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .put(claims.dev.clone(), (active, Instant::now()));
                active
            }
            Err(e) => {
                tracing::warn!(device = %claims.dev, error = %e, "cannot ask the cloud about a device; going by its ticket");
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::TicketKind;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Answers from a list, counting the questions.
    struct Answers {
        asked: AtomicUsize,
        answers: Vec<Result<bool, ()>>,
    }

    #[async_trait::async_trait]
    impl Standings for Answers {
        async fn active(&self, _: &str, _: &Claims) -> Result<bool, AskError> {
            let n = self.asked.fetch_add(1, Ordering::SeqCst);
            match self.answers[n.min(self.answers.len() - 1)] {
                Ok(a) => Ok(a),
                Err(()) => Err(AskError::Status { status: 503 }),
            }
        }
    }

    fn claims(dev: &str) -> Claims {
        Claims {
            iss: "meshfs-cloud".into(),
            sub: "ann".into(),
            aud: "meshfs-relay".into(),
            iat: 0,
            nbf: 0,
            exp: 0,
            jti: "1".into(),
            dev: dev.into(),
            kind: TicketKind::Relay,
            res: None,
            rights: Vec::new(),
            epoch: None,
            peer: None,
        }
    }

    #[tokio::test]
    async fn an_answer_is_remembered_per_device_and_a_refusal_holds() {
        let ask = Arc::new(Answers {
            asked: AtomicUsize::new(0),
            answers: vec![Ok(false), Ok(true)],
        });
        let remembered = Remembered::new(ask.clone());
        assert!(!remembered.active("t", &claims("a")).await);
        assert!(!remembered.active("t", &claims("a")).await, "remembered");
        assert_eq!(ask.asked.load(Ordering::SeqCst), 1);
        assert!(remembered.active("t", &claims("b")).await, "asked anew");
        assert_eq!(ask.asked.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_cloud_that_gives_no_answer_leaves_the_ticket_to_decide_and_is_asked_again() {
        let ask = Arc::new(Answers {
            asked: AtomicUsize::new(0),
            answers: vec![Err(()), Ok(false)],
        });
        let remembered = Remembered::new(ask.clone());
        assert!(remembered.active("t", &claims("a")).await);
        assert!(!remembered.active("t", &claims("a")).await);
        assert_eq!(ask.asked.load(Ordering::SeqCst), 2);
    }
}
