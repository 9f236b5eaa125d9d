//! The gRPC face of the federation: each handler validates and converts its message (through
//! `flotilla_common::wire`), asks the federation actor, and maps refusals to statuses.
//! Together with `wire`, the only code of the coordinator that names `pb::` types.

use std::pin::Pin;

use flotilla_common::FlatParams;
use flotilla_common::compress::Codec;
use flotilla_common::train::DeclineCause;
use flotilla_common::wire::{self, Assembler, UpdatePart};
use flotilla_proto::PROTOCOL_VERSION;
use flotilla_proto::pb::{self, federation_server::Federation as FederationRpc};
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use flotilla_common::pki;

use crate::delta_cache::DeltaCache;
use crate::federation::secure::{Answer, Step};
use crate::federation::state::{UpdateClaim, site_of_client_id};
use crate::federation::{FederationHandle, Rejection, Work};
use crate::streams::{self, StreamLimits, UploadSlots};

/// The `flotilla.v1.Federation` service.
#[derive(Debug, Clone)]
pub struct FederationService {
    handle: FederationHandle,
    /// Long-poll, idle and per-site stream limits.
    limits: StreamLimits,
    /// Uploads open per site.
    uploads: UploadSlots,
    /// This round's delta download, encoded once for every site.
    deltas: DeltaCache,
    /// With mutual TLS every request must carry a site certificate, and the site it names is
    /// the only site the request may speak for.
    mtls: bool,
}

impl FederationService {
    pub fn new(handle: FederationHandle, limits: StreamLimits, mtls: bool) -> Self {
        Self { handle, limits, uploads: UploadSlots::default(), deltas: DeltaCache::default(), mtls }
    }

    /// The site named by the caller's certificate (`None` without TLS).
    fn caller<T>(&self, req: &Request<T>) -> Result<Option<String>, Status> {
        if !self.mtls {
            return Ok(None);
        }
        let certs = req.peer_certs().ok_or_else(|| Status::unauthenticated("a client certificate is required"))?;
        let leaf = certs.first().ok_or_else(|| Status::unauthenticated("a client certificate is required"))?;
        pki::site_of_certificate(leaf.as_ref()).map(Some).map_err(|e| Status::unauthenticated(e.to_string()))
    }

    /// Has the actor log and count a refusal made here, before the state machine saw it.
    async fn refuse(&self, from: &str, status: Status) -> Status {
        self.handle.refused(from.to_owned(), status.message().to_owned()).await;
        status
    }

    /// Refuses a request whose client id belongs to another site than the certificate's.
    fn authorize<T>(&self, req: &Request<T>, client_id: &str) -> Result<(), Status> {
        bounded("client_id", client_id)?;
        if let Some(site) = self.caller(req)?
            && site_of_client_id(client_id) != Some(site.as_str())
        {
            return Err(Status::permission_denied(format!("the certificate is for site `{site}` but the request speaks for client `{client_id}`")));
        }
        Ok(())
    }
}

/// Maps a refusal to the status a client acts on.
fn status(r: Rejection) -> Status {
    match r {
        Rejection::UnknownClient(m) => Status::not_found(m),
        Rejection::InvalidArgument(m) => Status::invalid_argument(m),
        Rejection::Closed(m) | Rejection::Stale(m) => Status::failed_precondition(m),
        Rejection::NotSelected(m) | Rejection::Forbidden(m) => Status::permission_denied(m),
        Rejection::Duplicate(m) => Status::already_exists(m),
        Rejection::Exhausted(m) => Status::resource_exhausted(m),
        Rejection::Unavailable(m) => Status::unavailable(m),
    }
}

fn bad(e: wire::WireError) -> Status {
    Status::invalid_argument(e.to_string())
}

/// The longest client id, hash or fingerprint a request may carry (ours are at most 150).
const MAX_TOKEN_BYTES: usize = 256;

/// Refuses an identifier longer than any the federation issues, before anything reads it.
fn bounded(field: &str, value: &str) -> Result<(), Status> {
    if value.len() > MAX_TOKEN_BYTES {
        return Err(Status::invalid_argument(format!("`{field}` is {} bytes long; at most {MAX_TOKEN_BYTES} are accepted", value.len())));
    }
    Ok(())
}

type ModelStream = Pin<Box<dyn Stream<Item = Result<pb::ModelChunk, Status>> + Send>>;

#[tonic::async_trait]
impl FederationRpc for FederationService {
    async fn join(&self, req: Request<pb::JoinRequest>) -> Result<Response<pb::JoinResponse>, Status> {
        let caller = self.caller(&req)?;
        let r = req.into_inner();
        if let Some(site) = caller
            && site != r.site
        {
            return Err(Status::permission_denied(format!("the certificate is for site `{site}` but the request claims to be `{}`", r.site)));
        }
        if r.protocol_version != PROTOCOL_VERSION {
            return Err(Status::failed_precondition(format!(
                "site `{}` speaks protocol version {}, this coordinator speaks {PROTOCOL_VERSION}",
                r.site, r.protocol_version
            )));
        }
        if r.columns.len() > 4 * 1024 || r.columns.iter().any(|c| c.len() > 1024) {
            return Err(Status::invalid_argument(format!("site `{}`: the header has {} columns, or a column name over 1 KiB", r.site, r.columns.len())));
        }
        let joined = self.handle.join(r.site, r.columns, r.num_rows).await.map_err(status)?;
        Ok(Response::new(pb::JoinResponse { client_id: joined.client_id, task_toml: joined.task_toml, seed: joined.seed }))
    }

    async fn report_stats(&self, req: Request<pb::ReportStatsRequest>) -> Result<Response<pb::Ack>, Status> {
        self.authorize(&req, &req.get_ref().client_id)?;
        let r = req.into_inner();
        let (client_id, num_train) = (r.client_id.clone(), r.num_train_examples);
        let stats = wire::stats_from_pb(r);
        self.handle.report_stats(client_id, stats, num_train).await.map_err(status)?;
        Ok(Response::new(pb::Ack {}))
    }

    async fn get_plan(&self, req: Request<pb::GetPlanRequest>) -> Result<Response<pb::Plan>, Status> {
        self.authorize(&req, &req.get_ref().client_id)?;
        let plan = self.handle.plan(req.into_inner().client_id).await.map_err(status)?;
        Ok(Response::new(plan.map_or_else(pb::Plan::default, |p| wire::plan_to_pb(&p))))
    }

    async fn pull_work(&self, req: Request<pb::PullWorkRequest>) -> Result<Response<pb::WorkItem>, Status> {
        self.authorize(&req, &req.get_ref().client_id)?;
        let client = req.into_inner().client_id;
        let mut progress = self.handle.progress();
        let deadline = tokio::time::Instant::now() + self.limits.long_poll;
        // Long poll: answer as soon as there is work, so rounds do not wait on a polling interval.
        let work = loop {
            progress.borrow_and_update();
            let work = self.handle.pull_work(client.clone()).await.map_err(status)?;
            if !matches!(work, Work::Wait { .. }) {
                break work;
            }
            match tokio::time::timeout_at(deadline, progress.changed()).await {
                Ok(Ok(())) => continue,
                _ => break work,
            }
        };
        Ok(Response::new(work_to_pb(work)))
    }

    async fn heartbeat(&self, req: Request<pb::HeartbeatRequest>) -> Result<Response<pb::Ack>, Status> {
        self.authorize(&req, &req.get_ref().client_id)?;
        self.handle.touch(req.into_inner().client_id).await.map_err(status)?;
        Ok(Response::new(pb::Ack {}))
    }

    type DownloadModelStream = ModelStream;

    async fn download_model(&self, req: Request<pb::DownloadModelRequest>) -> Result<Response<Self::DownloadModelStream>, Status> {
        self.authorize(&req, &req.get_ref().client_id)?;
        let r = req.into_inner();
        bounded("model_hash", &r.model_hash)?;
        bounded("have_model_hash", &r.have_model_hash)?;
        let served = self.handle.model(r.client_id.clone(), r.round, r.model_hash.clone(), r.have_model_hash).await.map_err(status)?;
        let full = 4 * served.model.layout().total() as u64;
        let delta = match served.base {
            Some((base_hash, base)) => self.deltas.get(&base_hash, base, &r.model_hash, served.model.clone()).await.map(|d| (base_hash, d)),
            None => None,
        };
        // Chunks are made as the client reads them, and the site's lease is kept alive.
        let stream = match delta {
            Some((base_hash, encoded)) => {
                let bytes = encoded.len() as u64;
                let metrics = &self.handle.telemetry().metrics;
                metrics.delta_downloads.inc();
                metrics.delta_saved_bytes.inc_by(full.saturating_sub(bytes));
                let chunks = wire::delta_chunks(served.model.layout(), encoded, r.round, r.model_hash, base_hash);
                streams::lease_keeping_download(self.handle.clone(), r.client_id, chunks, bytes)
            }
            None => streams::lease_keeping_download(self.handle.clone(), r.client_id, wire::model_chunks(served.model, r.round, r.model_hash), full),
        };
        Ok(Response::new(Box::pin(stream)))
    }

    async fn upload_update(&self, req: Request<Streaming<pb::UpdateChunk>>) -> Result<Response<pb::Ack>, Status> {
        let caller = self.caller(&req)?;
        let mut stream = req.into_inner();
        let first =
            streams::next_within(&mut stream, self.limits.idle, "update stream").await?.ok_or_else(|| Status::invalid_argument("empty update stream"))?;
        let UpdatePart::Header(h) = wire::update_part(first).map_err(bad)? else {
            return Err(Status::invalid_argument("an update stream must start with its header"));
        };
        for (field, value) in [
            ("client_id", &h.client_id),
            ("base_model_hash", &h.base_model_hash),
            ("layout_fingerprint", &h.layout_fingerprint),
            ("values_sha256", &h.values_sha256),
        ] {
            bounded(field, value)?;
        }
        // Each open upload holds a model-sized buffer: a site gets a bounded number of them.
        let _slot = self.uploads.take(site_of_client_id(&h.client_id).unwrap_or(&h.client_id), self.limits.uploads_per_site)?;
        if let Some(site) = caller
            && site_of_client_id(&h.client_id) != Some(site.as_str())
        {
            return Err(Status::permission_denied(format!("the certificate is for site `{site}` but the update speaks for client `{}`", h.client_id)));
        }
        // Armed before the header is checked: the connection may die (and this handler be
        // dropped) while the actor checks it.
        let mut guard = UploadGuard { handle: self.handle.clone(), client: h.client_id.clone(), round: h.round, reason: None, armed: true };
        // The header is checked before any value is read, so a refused update costs nothing.
        let layout = match self
            .handle
            .begin_update(UpdateClaim {
                client_id: h.client_id.clone(),
                round: h.round,
                base_hash: h.base_model_hash.clone(),
                fingerprint: h.layout_fingerprint.clone(),
                total: h.total_values,
                num_examples: h.num_examples,
                masked: h.masked,
            })
            .await
        {
            Ok(layout) => layout,
            Err(refused) => {
                guard.disarm(); // the actor counted the refusal
                return Err(status(refused));
            }
        };
        if h.masked {
            if h.encoding != Codec::F32 {
                // Masked values are uniform in Z/2^64: a codec would save nothing and break the sum.
                return Err(guard.fail(Status::invalid_argument(format!(
                    "masked input of `{}` for round {}: secure aggregation sends u64 values, never a compressed encoding",
                    h.client_id, h.round
                ))));
            }
            return self.receive_masked(&mut stream, h, &mut guard).await;
        }
        tracing::debug!(client = %h.client_id, round = h.round, values = h.total_values, "receiving update");
        let (values, sum) = match self.receive_values(&mut stream, &h, layout.fingerprint()).await {
            Ok(v) => v,
            Err(s) => return Err(guard.fail(s)),
        };
        let delta = FlatParams::new(layout, values).map_err(|e| Status::invalid_argument(e.to_string()))?;
        if sum != h.values_sha256 {
            let reason = format!(
                "update of `{}` for round {}: checksum mismatch (the values hash to {}, the header says `{}`): corrupted in transit",
                h.client_id,
                h.round,
                &sum[..12],
                h.values_sha256.chars().take(12).collect::<String>()
            );
            return Err(guard.fail(Status::data_loss(reason)));
        }
        // Delivered: from here the actor decides (and counts a refusal itself).
        guard.disarm();
        self.handle.update(h.client_id, h.round, h.base_model_hash, delta, h.num_examples, h.metrics).await.map_err(status)?;
        Ok(Response::new(pb::Ack {}))
    }

    async fn submit_evaluation(&self, req: Request<pb::EvaluationResult>) -> Result<Response<pb::Ack>, Status> {
        self.authorize(&req, &req.get_ref().client_id)?;
        let r = req.into_inner();
        bounded("model_hash", &r.model_hash)?;
        let eval = match wire::evaluation_from_pb(&r) {
            Ok(e) => e,
            Err(e) => {
                return Err(self.refuse(&r.client_id, Status::invalid_argument(format!("evaluation of `{}` for round {}: {e}", r.client_id, r.round))).await);
            }
        };
        self.handle.evaluation(r.client_id, r.round, r.model_hash, eval).await.map_err(status)?;
        Ok(Response::new(pb::Ack {}))
    }

    async fn sec_agg(&self, req: Request<pb::SecAggRequest>) -> Result<Response<pb::SecAggResponse>, Status> {
        use pb::sec_agg_request::Step as PbStep;
        self.authorize(&req, &req.get_ref().client_id)?;
        let r = req.into_inner();
        let bad = |e: wire::WireError| Status::invalid_argument(format!("secure aggregation message of `{}` for round {}: {e}", r.client_id, r.round));
        let site = site_of_client_id(&r.client_id).unwrap_or_default().to_owned();
        let step = match r.step.clone().ok_or_else(|| Status::invalid_argument("a secure aggregation message needs a step"))? {
            PbStep::Keys(k) => Step::Keys(wire::keys_from_pb(&k).map_err(bad)?, wire::endorsement_from_pb(&k).map_err(bad)?),
            PbStep::Shares(s) => Step::Shares(wire::sealed_from_pb(s)),
            PbStep::Reveal(v) => Step::Reveal(wire::reveal_from_pb(&site, &v).map_err(bad)?),
            PbStep::Poll(stage) => Step::Poll(stage),
        };
        let polling = matches!(step, Step::Poll(_));
        let mut progress = self.handle.progress();
        let deadline = tokio::time::Instant::now() + self.limits.long_poll;
        progress.borrow_and_update();
        let mut answer = self.handle.secagg(r.client_id.clone(), r.round, step.clone()).await.map_err(status)?;
        // Long poll: a waiting site hears of the next stage as soon as it opens.
        while polling && answer == Answer::Wait {
            match tokio::time::timeout_at(deadline, progress.changed()).await {
                Ok(Ok(())) => {
                    progress.borrow_and_update();
                    answer = self.handle.secagg(r.client_id.clone(), r.round, step.clone()).await.map_err(status)?;
                }
                _ => break,
            }
        }
        use pb::sec_agg_response::Answer as PbAnswer;
        let answer = match answer {
            Answer::Roster(roster) => PbAnswer::Roster(wire::roster_to_pb(&roster)),
            Answer::Inbox(inbox) => PbAnswer::Inbox(wire::sealed_to_pb(&inbox)),
            Answer::Survivors(sites) => PbAnswer::Survivors(pb::SecAggSurvivors { sites }),
            Answer::Wait => PbAnswer::Wait(pb::Ack {}),
            Answer::Done(reason) => PbAnswer::Done(reason),
        };
        Ok(Response::new(pb::SecAggResponse { answer: Some(answer) }))
    }

    async fn decline_fit(&self, req: Request<pb::DeclineFitRequest>) -> Result<Response<pb::Ack>, Status> {
        self.authorize(&req, &req.get_ref().client_id)?;
        let r = req.into_inner();
        bounded("model_hash", &r.model_hash)?;
        let cause = match pb::DeclineCause::try_from(r.cause) {
            Ok(pb::DeclineCause::Diverged) => DeclineCause::Diverged,
            // Unspecified, or a cause this coordinator does not know: the site must say why.
            _ => {
                let message = format!("client `{}` declined round {} with cause {}, which is not one this coordinator knows", r.client_id, r.round, r.cause);
                return Err(self.refuse(&r.client_id, Status::invalid_argument(message)).await);
            }
        };
        self.handle.decline(r.client_id, r.round, r.model_hash, cause).await.map_err(status)?;
        Ok(Response::new(pb::Ack {}))
    }

    async fn leave(&self, req: Request<pb::LeaveRequest>) -> Result<Response<pb::Ack>, Status> {
        self.authorize(&req, &req.get_ref().client_id)?;
        self.handle.leave(req.into_inner().client_id).await;
        Ok(Response::new(pb::Ack {}))
    }
}

impl FederationService {
    /// A masked input (secure aggregation): read as u64 values, checked against its checksum,
    /// and handed to the actor, which adds it to the secure sum.
    async fn receive_masked(
        &self,
        stream: &mut Streaming<pb::UpdateChunk>,
        h: wire::UpdateHeader,
        guard: &mut UploadGuard,
    ) -> Result<Response<pb::Ack>, Status> {
        let what = |e: wire::WireError| Status::invalid_argument(format!("masked input of `{}` for round {}: {e}", h.client_id, h.round));
        let received = async {
            let mut asm = wire::MaskedAssembler::new(h.total_values).map_err(what)?;
            while let Some(chunk) = streams::next_within(stream, self.limits.idle, "masked input").await? {
                match wire::update_part(chunk).map_err(what)? {
                    UpdatePart::Data(d) => asm.push(&d).map_err(what)?,
                    UpdatePart::Header(_) => return Err(what(wire::WireError::UnexpectedHeader)),
                }
                self.handle.touch(h.client_id.clone()).await.map_err(status)?;
            }
            let values = asm.finish().map_err(what)?;
            if wire::masked_checksum(&h.layout_fingerprint, &values) != h.values_sha256 {
                return Err(Status::data_loss(format!("masked input of `{}` for round {}: checksum mismatch: corrupted in transit", h.client_id, h.round)));
            }
            Ok(values)
        };
        let values = match received.await {
            Ok(v) => v,
            Err(s) => return Err(guard.fail(s)),
        };
        guard.disarm();
        self.handle.masked(h.client_id, h.round, h.base_model_hash, h.layout_fingerprint, values, h.metrics).await.map_err(status)?;
        Ok(Response::new(pb::Ack {}))
    }

    /// Reads an update's values into one buffer of the declared size, refusing anything more,
    /// and their checksum, computed as they arrive; a compressed update is buffered (at most
    /// what its codec can take for the declared values) and decoded strictly at the end.
    async fn receive_values(&self, stream: &mut Streaming<pb::UpdateChunk>, h: &wire::UpdateHeader, fingerprint: &str) -> Result<(Vec<f32>, String), Status> {
        let what = |e: wire::WireError| Status::invalid_argument(format!("update of `{}` for round {}: {e}", h.client_id, h.round));
        enum Receiving {
            Plain(Assembler),
            Encoded(wire::EncodedAssembler),
        }
        let mut asm = match h.encoding {
            Codec::F32 => Receiving::Plain(Assembler::new(h.total_values, fingerprint).map_err(what)?),
            codec => Receiving::Encoded(wire::EncodedAssembler::new(codec, h.total_values, fingerprint).map_err(what)?),
        };
        while let Some(chunk) = streams::next_within(stream, self.limits.idle, "update stream").await? {
            match wire::update_part(chunk).map_err(what)? {
                UpdatePart::Data(d) => match &mut asm {
                    Receiving::Plain(a) => a.push(&d).map_err(what)?,
                    Receiving::Encoded(a) => a.push(&d).map_err(what)?,
                },
                UpdatePart::Header(_) => return Err(what(wire::WireError::UnexpectedHeader)),
            }
            // Receiving is progress: keep the lease of a site with a slow link alive.
            self.handle.touch(h.client_id.clone()).await.map_err(status)?;
        }
        let (values, sum, bytes) = match asm {
            Receiving::Plain(a) => {
                let (values, sum) = a.finish().map_err(what)?;
                let bytes = 4 * values.len();
                (values, sum, bytes)
            }
            Receiving::Encoded(a) => a.finish().map_err(what)?,
        };
        self.handle.telemetry().metrics.received_bytes.inc_by(bytes as u64);
        Ok((values, sum))
    }
}

/// An upload whose header was accepted counts as refused unless it is delivered: also when
/// the connection dies mid-stream and the server drops the handler without a word.
struct UploadGuard {
    handle: FederationHandle,
    client: String,
    round: u32,
    /// Why it failed, when known.
    reason: Option<String>,
    /// False once the upload was delivered.
    armed: bool,
}

impl UploadGuard {
    fn fail(&mut self, status: Status) -> Status {
        self.reason = Some(status.message().to_owned());
        status
    }

    fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for UploadGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (handle, client, round) = (self.handle.clone(), std::mem::take(&mut self.client), self.round);
        let reason = self.reason.take().unwrap_or_else(|| "the upload broke off (connection lost)".into());
        // Drop cannot wait: the actor hears of it from a task of its own.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move { handle.upload_failed(client, round, reason).await });
        }
    }
}

fn work_to_pb(w: Work) -> pb::WorkItem {
    use pb::work_item::Kind;
    let kind = match w {
        Work::Fit { round, model_hash, plan_fingerprint, local_epochs, proximal_mu, control_hash, secure_aggregation } => {
            Kind::Fit(pb::FitWork { round, model_hash, plan_fingerprint, local_epochs, proximal_mu, control_hash, secure_aggregation })
        }
        Work::Evaluate { round, model_hash, plan_fingerprint } => Kind::Evaluate(pb::EvaluateWork { round, model_hash, plan_fingerprint }),
        Work::Wait { current_round } => Kind::Wait(pb::WaitWork { millis: 0, current_round }),
        Work::Done { reason } => Kind::Done(pb::DoneWork { reason }),
    };
    pb::WorkItem { kind: Some(kind) }
}
