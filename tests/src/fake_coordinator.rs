//! A fake, hostile coordinator: a small tonic server that speaks the protocol to a real
//! `flotilla-client` and sends what an honest coordinator never would, while recording
//! everything the site sends. Tests use it to check that the site's own rules hold against
//! a coordinator that is compromised or simply wrong.

use std::pin::Pin;
use std::sync::{Arc, Mutex};

use flotilla_common::data::{ColumnKind, ColumnPlan, Plan};
use flotilla_common::model::ModelShape;
use flotilla_common::{FlatParams, Task, wire};
use flotilla_proto::pb::{self, federation_server::Federation, federation_server::FederationServer};
use tokio_stream::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

/// What the fake coordinator does wrong.
#[derive(Debug, Clone, PartialEq)]
pub enum Hostility {
    /// Nothing: an honest single-site coordinator.
    None,
    /// The plan gets a categorical column with this many made-up categories.
    HugeVocabulary(usize),
    /// The model's data does not match the hash announced for it.
    WrongModelHash,
    /// The model comes as a delta from a model of the fake's own, which it claims is the one
    /// the site holds (or, when the site holds none, a made-up one).
    DeltaFromAnotherModel,
    /// The model announced is wider than the plan's (hidden layers multiplied by 100).
    WiderModel,
    /// Fit work asks for this many local epochs, whatever the task says.
    Epochs(u32),
    /// After the first update the coordinator "forgets" the site; at the rejoin it sends
    /// this task instead of the first.
    ChangeTaskOnRejoin(Box<Task>),
}

/// The script of a fake federation.
#[derive(Debug, Clone)]
pub struct Script {
    pub task: Task,
    /// Rounds of Fit work before Done.
    pub rounds: u32,
    pub hostility: Hostility,
}

/// Everything the site sent, in the order it arrived.
#[derive(Debug, Default, Clone)]
pub struct Received {
    pub joins: Vec<pb::JoinRequest>,
    pub stats: Vec<pb::ReportStatsRequest>,
    /// Update headers, with the bytes of values that followed each.
    pub updates: Vec<(pb::UpdateHeader, usize)>,
    pub evaluations: Vec<pb::EvaluationResult>,
    /// Rounds the site declined (its training diverged), with their cause.
    pub declines: Vec<pb::DeclineFitRequest>,
    pub leaves: usize,
    /// Every request, as debug text: a test searches it for what must never leave the site.
    pub transcript: String,
}

#[derive(Debug, Default)]
struct State {
    received: Received,
    forgot: bool,
    plan: Option<Plan>,
}

#[derive(Debug, Clone)]
struct Fake {
    script: Arc<Script>,
    state: Arc<Mutex<State>>,
}

/// A running fake coordinator.
#[derive(Debug)]
pub struct FakeCoordinator {
    pub url: String,
    state: Arc<Mutex<State>>,
    stop: CancellationToken,
}

impl FakeCoordinator {
    /// Serves `script` on an ephemeral loopback port (plaintext).
    pub async fn start(script: Script) -> FakeCoordinator {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let state = Arc::new(Mutex::new(State::default()));
        let fake = Fake { script: Arc::new(script), state: state.clone() };
        let stop = CancellationToken::new();
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let shutdown = stop.clone();
        tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(FederationServer::new(fake))
                .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
                .await;
        });
        FakeCoordinator { url, state, stop }
    }

    /// What the site sent so far.
    pub fn received(&self) -> Received {
        self.state.lock().map(|s| s.received.clone()).unwrap_or_default()
    }
}

impl Drop for FakeCoordinator {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Fake {
    fn log(&self, what: &str, request: &impl std::fmt::Debug) {
        if let Ok(mut s) = self.state.lock() {
            s.received.transcript.push_str(&format!("{what}: {request:?}\n"));
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> Result<T, Status> {
        self.state.lock().map(|mut s| f(&mut s)).map_err(|_| Status::internal("fake coordinator state poisoned"))
    }

    /// The plan of the site's reported aggregates, made hostile if the script says so.
    fn plan(&self) -> Result<Option<Plan>, Status> {
        self.with(|s| {
            if s.plan.is_none() {
                let stats = s.received.stats.last()?.clone();
                let site = wire::stats_from_pb(stats);
                let mut plan = Plan::combine(&[&site]);
                if let Hostility::HugeVocabulary(n) = self.script.hostility {
                    let vocabulary = (0..n).map(|i| format!("v{i}")).collect();
                    plan.columns.push(ColumnPlan { name: "made_up".into(), kind: ColumnKind::Categorical { vocabulary } });
                }
                s.plan = Some(plan);
            }
            s.plan.clone()
        })
    }

    /// The global model for the plan (what the fake claims it is, and what it sends).
    fn model(&self, plan: &Plan) -> (FlatParams, String) {
        let task = &self.script.task;
        let mut shape = ModelShape::for_task(task, plan.width());
        if self.script.hostility == Hostility::WiderModel {
            shape.hidden.iter_mut().for_each(|h| *h *= 100);
        }
        let model = shape.init_params(1);
        let hash = if self.script.hostility == Hostility::WrongModelHash { shape.init_params(2).hash() } else { model.hash() };
        (model, hash)
    }
}

type ChunkStream = Pin<Box<dyn Stream<Item = Result<pb::ModelChunk, Status>> + Send>>;

#[tonic::async_trait]
impl Federation for Fake {
    async fn join(&self, request: Request<pb::JoinRequest>) -> Result<Response<pb::JoinResponse>, Status> {
        let r = request.into_inner();
        self.log("join", &r);
        let rejoin = self.with(|s| {
            s.received.joins.push(r.clone());
            s.received.joins.len() > 1
        })?;
        let task = match (&self.script.hostility, rejoin) {
            (Hostility::ChangeTaskOnRejoin(changed), true) => changed.as_ref().clone(),
            _ => self.script.task.clone(),
        };
        Ok(Response::new(pb::JoinResponse { client_id: format!("{}#1", r.site), task_toml: task.to_toml(), seed: 7 }))
    }

    async fn report_stats(&self, request: Request<pb::ReportStatsRequest>) -> Result<Response<pb::Ack>, Status> {
        let r = request.into_inner();
        self.log("report_stats", &r);
        self.with(|s| s.received.stats.push(r))?;
        Ok(Response::new(pb::Ack {}))
    }

    async fn get_plan(&self, request: Request<pb::GetPlanRequest>) -> Result<Response<pb::Plan>, Status> {
        self.log("get_plan", request.get_ref());
        let plan = self.plan()?.ok_or_else(|| Status::failed_precondition("no aggregates yet"))?;
        Ok(Response::new(wire::plan_to_pb(&plan)))
    }

    async fn pull_work(&self, request: Request<pb::PullWorkRequest>) -> Result<Response<pb::WorkItem>, Status> {
        self.log("pull_work", request.get_ref());
        use pb::work_item::Kind;
        let (updates, forget) = self.with(|s| {
            let n = s.received.updates.len();
            let forget = matches!(self.script.hostility, Hostility::ChangeTaskOnRejoin(_)) && n == 1 && !s.forgot;
            if forget {
                s.forgot = true;
            }
            (n, forget)
        })?;
        if forget {
            return Err(Status::not_found("unknown client (the fake forgot it)"));
        }
        let Some(plan) = self.plan()? else {
            return Ok(Response::new(pb::WorkItem { kind: Some(Kind::Wait(pb::WaitWork { millis: 20, current_round: 0 })) }));
        };
        if updates as u32 >= self.script.rounds {
            return Ok(Response::new(pb::WorkItem { kind: Some(Kind::Done(pb::DoneWork { reason: "the fake federation is done".into() })) }));
        }
        let (_, hash) = self.model(&plan);
        let local_epochs = match self.script.hostility {
            Hostility::Epochs(e) => e,
            _ => self.script.task.training.local_epochs,
        };
        Ok(Response::new(pb::WorkItem {
            kind: Some(Kind::Fit(pb::FitWork {
                round: updates as u32 + 1,
                model_hash: hash,
                plan_fingerprint: plan.fingerprint(),
                local_epochs,
                proximal_mu: 0.0,
                control_hash: String::new(),
                secure_aggregation: self.script.task.secure_aggregation,
            })),
        }))
    }

    async fn heartbeat(&self, _request: Request<pb::HeartbeatRequest>) -> Result<Response<pb::Ack>, Status> {
        Ok(Response::new(pb::Ack {}))
    }

    type DownloadModelStream = ChunkStream;

    async fn download_model(&self, request: Request<pb::DownloadModelRequest>) -> Result<Response<Self::DownloadModelStream>, Status> {
        let r = request.into_inner();
        self.log("download_model", &r);
        let plan = self.plan()?.ok_or_else(|| Status::failed_precondition("no plan"))?;
        let (model, hash) = self.model(&plan);
        let chunks: Vec<Result<pb::ModelChunk, Status>> = if self.script.hostility == Hostility::DeltaFromAnotherModel {
            let other = FlatParams::zeros(model.layout().clone());
            let encoded = flotilla_common::compress::delta::encode(other.values(), model.values()).map_err(|e| Status::internal(e.to_string()))?;
            let claimed = if r.have_model_hash.is_empty() { "0".repeat(64) } else { r.have_model_hash.clone() };
            wire::delta_chunks(model.layout(), encoded.into(), r.round, hash, claimed).map(Ok).collect()
        } else {
            wire::model_chunks(Arc::new(model), r.round, hash).map(Ok).collect()
        };
        Ok(Response::new(Box::pin(tokio_stream::iter(chunks))))
    }

    async fn upload_update(&self, request: Request<Streaming<pb::UpdateChunk>>) -> Result<Response<pb::Ack>, Status> {
        let mut stream = request.into_inner();
        let mut header = None;
        let mut bytes = 0;
        while let Some(chunk) = stream.next().await {
            match chunk?.kind {
                Some(pb::update_chunk::Kind::Header(h)) => header = Some(h),
                Some(pb::update_chunk::Kind::Data(d)) => bytes += d.len(),
                None => {}
            }
        }
        let header = header.ok_or_else(|| Status::invalid_argument("no header"))?;
        self.log("upload_update", &header);
        self.with(|s| s.received.updates.push((header, bytes)))?;
        Ok(Response::new(pb::Ack {}))
    }

    async fn submit_evaluation(&self, request: Request<pb::EvaluationResult>) -> Result<Response<pb::Ack>, Status> {
        let r = request.into_inner();
        self.log("submit_evaluation", &r);
        self.with(|s| s.received.evaluations.push(r))?;
        Ok(Response::new(pb::Ack {}))
    }

    async fn decline_fit(&self, request: Request<pb::DeclineFitRequest>) -> Result<Response<pb::Ack>, Status> {
        let r = request.into_inner();
        self.log("decline_fit", &r);
        self.with(|s| s.received.declines.push(r))?;
        Ok(Response::new(pb::Ack {}))
    }

    async fn leave(&self, request: Request<pb::LeaveRequest>) -> Result<Response<pb::Ack>, Status> {
        self.log("leave", request.get_ref());
        self.with(|s| s.received.leaves += 1)?;
        Ok(Response::new(pb::Ack {}))
    }

    async fn sec_agg(&self, _request: Request<pb::SecAggRequest>) -> Result<Response<pb::SecAggResponse>, Status> {
        Err(Status::unimplemented("the fake coordinator has no secure aggregation"))
    }
}
