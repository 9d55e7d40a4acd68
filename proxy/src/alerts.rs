//! Alert delivery: policy verdicts may carry alert events for a webhook. They are POSTed
//! as JSON by a background task, so a slow or dead webhook never delays a stanza; when
//! the queue is full an alert is dropped and logged rather than blocking the session.

use std::time::Duration;

use custos_policy::AlertEvent;
use tokio::sync::mpsc;
use tracing::{debug, warn};

const QUEUE: usize = 1024;

#[derive(Clone)]
pub struct AlertSender {
    tx: mpsc::Sender<AlertEvent>,
}

impl AlertSender {
    /// Starts the delivery task on the current runtime.
    pub fn spawn() -> Result<AlertSender, AlertSetupError> {
        let tls = crate::tls::upstream_config(None, false)?;
        let client = reqwest::Client::builder()
            .use_preconfigured_tls((*tls).clone())
            .timeout(Duration::from_secs(5))
            .build()?;
        let (tx, mut rx) = mpsc::channel::<AlertEvent>(QUEUE);
        tokio::spawn(async move {
            while let Some(alert) = rx.recv().await {
                let url = alert.webhook.to_string();
                match client.post(&url).json(&alert).send().await {
                    Ok(resp) if resp.status().is_success() => {
                        debug!(rule = %alert.rule, "alert delivered");
                    }
                    Ok(resp) => {
                        warn!(rule = %alert.rule, status = %resp.status(), "alert webhook refused the alert")
                    }
                    Err(err) => {
                        warn!(rule = %alert.rule, cause = %err, "alert webhook unreachable")
                    }
                }
            }
        });
        Ok(AlertSender { tx })
    }

    /// A sender whose alerts are read from the returned queue instead of being POSTed.
    #[cfg(test)]
    pub(crate) fn queue() -> (AlertSender, mpsc::Receiver<AlertEvent>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        (AlertSender { tx }, rx)
    }

    /// Queues an alert; never waits.
    pub fn send(&self, alert: &AlertEvent) {
        if self.tx.try_send(alert.clone()).is_err() {
            metrics::counter!("custos_alerts_dropped_total").increment(1);
            warn!(rule = %alert.rule, "alert queue full; alert dropped");
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AlertSetupError {
    #[error("alert client TLS: {0}")]
    Tls(#[from] crate::tls::TlsSetupError),
    #[error("alert client: {0}")]
    Client(#[from] reqwest::Error),
}
