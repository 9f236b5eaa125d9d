//! The coordinator's API in domain terms. Converts through `flotilla_common::wire`; the rest of
//! the client never sees protocol types.

use std::sync::Arc;
use std::time::Duration;

use flotilla_common::FlatParams;
use flotilla_common::data::{Plan, SiteStats};
pub use flotilla_common::secagg::{Answer as SecAggReply, Step as SecAggSend};
use flotilla_common::train::{DeclineCause, Evaluation};
use flotilla_common::wire::{self, ModelReceiver, UpdateHeader};
use flotilla_proto::PROTOCOL_VERSION;
use flotilla_proto::pb::{self, federation_client::FederationClient};
use tonic::transport::{Channel, Endpoint};

use crate::error::ClientError;
use crate::tls::{ClientTls, install_crypto_provider};

/// What the coordinator asks of the site.
#[derive(Debug, Clone, PartialEq)]
pub enum Work {
    Fit { round: u32, model_hash: String, plan_fingerprint: String, local_epochs: u32, proximal_mu: f64, control_hash: String, secure_aggregation: bool },
    Evaluate { round: u32, model_hash: String, plan_fingerprint: String },
    Wait { millis: u32, current_round: u32 },
    Done { reason: String },
}

/// The answer to a join.
#[derive(Debug, Clone)]
pub struct Joined {
    pub client_id: String,
    pub task_toml: String,
    pub seed: u64,
}

/// A connection to the coordinator.
#[derive(Debug, Clone)]
pub struct Connection {
    rpc: FederationClient<Channel>,
}

impl Connection {
    /// Connects, retrying with backoff for up to `patience` (the coordinator may still be
    /// starting). `https://` URLs need `tls`; a refused certificate is not retried.
    pub async fn connect(url: &str, tls: Option<&ClientTls>, patience: Duration) -> Result<Self, ClientError> {
        let err = |m: String| ClientError::Connect { url: url.to_owned(), message: m };
        let https = url.starts_with("https://");
        if https != tls.is_some() {
            return Err(err(if https {
                "an https:// coordinator needs the site's certificate (--ca, --cert, --key)".into()
            } else {
                "TLS material was given but the URL is not https://".into()
            }));
        }
        let mut endpoint = Endpoint::from_shared(url.to_owned())
            .map_err(|e| err(format!("not a valid URL: {e}")))?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_while_idle(true);
        if let Some(tls) = tls {
            install_crypto_provider();
            endpoint = endpoint.tls_config(tls.config()).map_err(|e| err(format!("TLS configuration: {}", source_chain(&e))))?;
        }
        let start = std::time::Instant::now();
        let mut delay = Duration::from_millis(50);
        loop {
            match endpoint.connect().await {
                Ok(channel) => return Ok(Self { rpc: FederationClient::new(channel) }),
                Err(e) if start.elapsed() + delay > patience || is_tls_refusal(&source_chain(&e)) => return Err(err(source_chain(&e))),
                Err(_) => {
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    pub async fn join(&self, site: &str, num_rows: u64, columns: Vec<String>) -> Result<Joined, ClientError> {
        let r = self
            .rpc
            .clone()
            .join(pb::JoinRequest { site: site.to_owned(), protocol_version: PROTOCOL_VERSION, num_rows, columns })
            .await
            .map_err(|s| ClientError::rpc(format!("join as `{site}`"), s))?
            .into_inner();
        Ok(Joined { client_id: r.client_id, task_toml: r.task_toml, seed: r.seed })
    }

    pub async fn report_stats(&self, client_id: &str, stats: &SiteStats, num_train: u64) -> Result<(), ClientError> {
        let req = wire::stats_to_pb(client_id, stats, num_train);
        self.rpc.clone().report_stats(req).await.map_err(|s| ClientError::rpc("report aggregates", s))?;
        Ok(())
    }

    pub async fn plan(&self, client_id: &str) -> Result<Option<Plan>, ClientError> {
        let p = self
            .rpc
            .clone()
            .get_plan(pb::GetPlanRequest { client_id: client_id.to_owned() })
            .await
            .map_err(|s| ClientError::rpc("get the preprocessing plan", s))?
            .into_inner();
        Ok(wire::plan_from_pb(p)?)
    }

    pub async fn pull_work(&self, client_id: &str, known_round: u32) -> Result<Work, ClientError> {
        use pb::work_item::Kind;
        let w = self
            .rpc
            .clone()
            .pull_work(pb::PullWorkRequest { client_id: client_id.to_owned(), known_round })
            .await
            .map_err(|s| ClientError::rpc("pull work", s))?
            .into_inner();
        Ok(match w.kind.ok_or(wire::WireError::Missing("work kind"))? {
            Kind::Fit(f) => Work::Fit {
                round: f.round,
                model_hash: f.model_hash,
                plan_fingerprint: f.plan_fingerprint,
                local_epochs: f.local_epochs,
                proximal_mu: f.proximal_mu,
                control_hash: f.control_hash,
                secure_aggregation: f.secure_aggregation,
            },
            Kind::Evaluate(e) => Work::Evaluate { round: e.round, model_hash: e.model_hash, plan_fingerprint: e.plan_fingerprint },
            Kind::Wait(w) => Work::Wait { millis: w.millis, current_round: w.current_round },
            Kind::Done(d) => Work::Done { reason: d.reason },
        })
    }

    pub async fn heartbeat(&self, client_id: &str) -> Result<(), ClientError> {
        self.rpc.clone().heartbeat(pb::HeartbeatRequest { client_id: client_id.to_owned() }).await.map_err(|s| ClientError::rpc("heartbeat", s))?;
        Ok(())
    }

    /// Downloads a global model chunk by chunk into one buffer and checks its hash. With
    /// `layout`, a header announcing another layout is refused before anything is allocated.
    /// With `held` (a model the site has, by hash), the coordinator may send the difference
    /// from it instead; the result is checked against `hash` all the same.
    pub async fn download_model(
        &self,
        client_id: &str,
        round: u32,
        hash: &str,
        layout: Option<&flotilla_common::Layout>,
        held: Option<(String, Arc<FlatParams>)>,
    ) -> Result<FlatParams, ClientError> {
        let what = || format!("download the model of round {round}");
        let have_model_hash = held.as_ref().map(|(h, _)| h.clone()).unwrap_or_default();
        let mut stream = self
            .rpc
            .clone()
            .download_model(pb::DownloadModelRequest { client_id: client_id.to_owned(), round, model_hash: hash.to_owned(), have_model_hash })
            .await
            .map_err(|s| ClientError::rpc(what(), s))?
            .into_inner();
        let mut rx = match layout {
            Some(l) => ModelReceiver::expecting(l.clone()),
            None => ModelReceiver::default(),
        };
        if let Some((h, base)) = held {
            rx = rx.with_base(h, base);
        }
        while let Some(chunk) = stream.message().await.map_err(|s| ClientError::rpc(what(), s))? {
            rx.push(chunk)?;
        }
        let (header, params) = rx.finish()?;
        if header.hash != hash {
            return Err(wire::WireError::Invalid(format!("asked for model {hash}, got {}", header.hash)).into());
        }
        if let Some(base) = &header.base_hash {
            tracing::debug!(round, bytes = header.encoded_bytes, full = 4 * params.values().len(), base = %&base[..base.len().min(12)], "model received as a delta");
        }
        Ok(params)
    }

    /// Streams an update (a delta) up, header first; chunks are made as they are sent.
    pub async fn upload_update(&self, header: UpdateHeader, delta: Arc<FlatParams>) -> Result<(), ClientError> {
        let round = header.round;
        let chunks = tokio_stream::iter(wire::update_chunks(header, delta));
        self.rpc.clone().upload_update(chunks).await.map_err(|s| ClientError::rpc(format!("upload the update of round {round}"), s))?;
        Ok(())
    }

    /// Streams a compressed update up: its header (naming the codec), then the encoded bytes.
    pub async fn upload_encoded(&self, header: UpdateHeader, encoded: bytes::Bytes) -> Result<(), ClientError> {
        let round = header.round;
        let chunks = tokio_stream::iter(wire::encoded_update_chunks(header, encoded));
        self.rpc.clone().upload_update(chunks).await.map_err(|s| ClientError::rpc(format!("upload the update of round {round}"), s))?;
        Ok(())
    }

    /// Streams a masked input (secure aggregation) up, header first.
    pub async fn upload_masked(&self, header: UpdateHeader, values: Arc<Vec<u64>>) -> Result<(), ClientError> {
        let round = header.round;
        let chunks = tokio_stream::iter(wire::masked_chunks(header, values));
        self.rpc.clone().upload_update(chunks).await.map_err(|s| ClientError::rpc(format!("upload the masked input of round {round}"), s))?;
        Ok(())
    }

    /// One step of the secure-aggregation exchange (long-polled while waiting).
    pub async fn secagg(&self, client_id: &str, round: u32, send: SecAggSend) -> Result<SecAggReply, ClientError> {
        use pb::sec_agg_request::Step;
        use pb::sec_agg_response::Answer;
        let step = match &send {
            SecAggSend::Keys(k, e) => Step::Keys(wire::keys_to_pb(k, e.as_ref())),
            SecAggSend::Shares(s) => Step::Shares(wire::sealed_to_pb(s)),
            SecAggSend::Reveal(r) => Step::Reveal(wire::reveal_to_pb(r)),
            SecAggSend::Poll(stage) => Step::Poll(*stage),
        };
        let r = self
            .rpc
            .clone()
            .sec_agg(pb::SecAggRequest { client_id: client_id.to_owned(), round, step: Some(step) })
            .await
            .map_err(|s| ClientError::rpc(format!("secure aggregation of round {round}"), s))?
            .into_inner();
        Ok(match r.answer.ok_or(wire::WireError::Missing("secure aggregation answer"))? {
            Answer::Roster(roster) => SecAggReply::Roster(wire::roster_from_pb(&roster)?),
            Answer::Inbox(inbox) => SecAggReply::Inbox(wire::sealed_from_pb(inbox)),
            Answer::Survivors(s) => SecAggReply::Survivors(s.sites),
            Answer::Wait(_) => SecAggReply::Wait,
            Answer::Done(reason) => SecAggReply::Done(reason),
        })
    }

    pub async fn submit_evaluation(&self, client_id: &str, round: u32, hash: &str, e: &Evaluation) -> Result<(), ClientError> {
        self.rpc
            .clone()
            .submit_evaluation(wire::evaluation_to_pb(client_id, round, hash, e))
            .await
            .map_err(|s| ClientError::rpc(format!("submit the evaluation of round {round}"), s))?;
        Ok(())
    }

    /// Says this site cannot deliver its update of `round` (trained from `model_hash`).
    pub async fn decline_fit(&self, client_id: &str, round: u32, model_hash: &str, cause: DeclineCause) -> Result<(), ClientError> {
        let cause = match cause {
            DeclineCause::Diverged => pb::DeclineCause::Diverged,
        };
        let request = pb::DeclineFitRequest { client_id: client_id.to_owned(), round, model_hash: model_hash.to_owned(), cause: cause.into() };
        self.rpc.clone().decline_fit(request).await.map_err(|s| ClientError::rpc(format!("decline round {round}"), s))?;
        Ok(())
    }

    pub async fn leave(&self, client_id: &str) -> Result<(), ClientError> {
        self.rpc.clone().leave(pb::LeaveRequest { client_id: client_id.to_owned() }).await.map_err(|s| ClientError::rpc("leave", s))?;
        Ok(())
    }
}

/// A handshake the other side refused will be refused again: do not retry it.
fn is_tls_refusal(chain: &str) -> bool {
    // Not "handshake": an EOF during the handshake is a coordinator (or proxy) still starting.
    let c = chain.to_ascii_lowercase();
    c.contains("certificate") || c.contains("alert")
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
