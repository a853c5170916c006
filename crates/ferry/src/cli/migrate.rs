//! `ferry migrate` and `ferry serve`: a migration hosted by this process, with its HTTP API,
//! dashboard, live view or log lines, and rate sampler, until it ends or a signal stops it.

use std::io::IsTerminal;

use tokio_util::sync::CancellationToken;

use super::args::{MigrateArgs, ServeArgs};
use super::{input_error, Exit, Signal};
use crate::control::{Controller, Finish};
use crate::lifecycle::Direction;
use crate::plan::{self, Clusters, Endpoint, InputError, Plan};
use crate::progress::Progress;
use crate::surface::api::{self, ServeSettings};
use crate::surface::{rates, view};

/// How long the API keeps answering after COMMITTED before the process exits.
const FINAL_STATE_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// `ferry migrate`, or `ferry reverse` with the forward migration's arguments.
pub async fn migrate(args: MigrateArgs, direction: Direction) -> Exit {
    let token = args.token.token();
    let ready = async {
        let addr = plan::api_address(&args.api_addr, token.as_deref())?;
        let mut plan = Plan::new(args.clusters.clusters().await?, &args.run.settings())?;
        if direction == Direction::Reverse {
            plan = plan.reversed()?;
        }
        Ok::<_, InputError>((bind(addr).await?, plan))
    };
    let (listener, plan) = match ready.await {
        Ok(ready) => ready,
        Err(e) => return input_error(e),
    };
    tracing::info!(
        source = %plan.source.redacted,
        destination = %plan.destination.redacted,
        api = %format!("http://{}", listener.local_addr().map_or_else(|_| "?".into(), |a| a.to_string())),
        direction = direction.as_str(),
        "starting migration"
    );
    let controller = Controller::new(Progress::default());
    let surface = Surface::start(listener, &controller, token, None);
    controller.start(plan).expect("a fresh controller starts");
    let signal = tokio::spawn(stop_on_signal(controller.clone()));
    let finish = controller.finished().await;
    if finish == Finish::Committed {
        // Keep answering a moment, so that dashboards and scripts polling the API see COMMITTED.
        tokio::time::sleep(FINAL_STATE_GRACE).await;
    }
    surface.stop().await;
    let s = controller.progress().snapshot();
    match finish {
        Finish::Committed => {
            eprintln!(
                "COMMITTED: {} documents copied, {} changes applied, in {} s",
                s.copied_documents(),
                s.events.total(),
                s.started.elapsed().as_secs()
            );
            if s.stray_writes.is_empty() {
                return Exit::Done;
            }
            for writes in &s.stray_writes {
                eprintln!(
                    "stray writes: {} took {} write(s) after the commit point (the first at {} s since the epoch); they are not on the destination",
                    writes.namespace, writes.count, writes.first_time
                );
            }
            Exit::StrayWrites
        }
        Finish::Stopped => {
            eprintln!("stopped before commit; run the same command again to continue");
            let signal = if signal.is_finished() {
                signal.await.unwrap_or(Signal::Interrupt)
            } else {
                Signal::Interrupt
            };
            Exit::Stopped(signal)
        }
        Finish::Refused => {
            eprintln!("error: {}", s.error.unwrap_or_default());
            Exit::Refused
        }
        Finish::Failed => {
            eprintln!("error: {}", s.error.unwrap_or_default());
            Exit::Failed
        }
    }
}

pub async fn serve(args: ServeArgs) -> Exit {
    let token = args.token.token();
    let ready = async {
        let addr = plan::api_address(&format!("{}:{}", args.host, args.port), token.as_deref())?;
        plan::namespace_filter(&[], &[], &args.state_db)?;
        let settings = ServeSettings {
            cluster0: Endpoint::parse("cluster0", &args.cluster0)
                .await?
                .with_password_file(args.cluster0_password_file.as_deref())?,
            cluster1: Endpoint::parse("cluster1", &args.cluster1)
                .await?
                .with_password_file(args.cluster1_password_file.as_deref())?,
            state_db: args.state_db.clone(),
            run: args.run.settings(),
        };
        // The run settings are checked now, not at the first `/api/v1/start`.
        let clusters = Clusters {
            source: settings.cluster0.clone(),
            destination: settings.cluster1.clone(),
            filter: Default::default(),
        };
        Plan::new(clusters, &settings.run)?;
        Ok::<_, InputError>((bind(addr).await?, settings))
    };
    let (listener, settings) = match ready.await {
        Ok(ready) => ready,
        Err(e) => return input_error(e),
    };
    tracing::info!(
        api = %format!("http://{}", listener.local_addr().map_or_else(|_| "?".into(), |a| a.to_string())),
        "IDLE: waiting for POST /api/v1/start"
    );
    let controller = Controller::new(Progress::default());
    let surface = Surface::start(listener, &controller, token, Some(settings));
    let signal = stop_on_signal(controller.clone()).await;
    surface.stop().await;
    Exit::Stopped(signal)
}

async fn bind(addr: std::net::SocketAddr) -> Result<tokio::net::TcpListener, InputError> {
    tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        InputError(format!(
            "cannot serve the API on {addr}: {e}; choose another address with --api-addr"
        ))
    })
}

/// The API server, the live view or log lines, and the rate sampler of one process.
struct Surface {
    quit: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Surface {
    fn start(
        listener: tokio::net::TcpListener,
        controller: &Controller,
        token: Option<String>,
        serve: Option<ServeSettings>,
    ) -> Self {
        let quit = CancellationToken::new();
        let progress = controller.progress().clone();
        let server = axum::serve(listener, api::router(controller.clone(), token, serve));
        let server_quit = quit.clone();
        let terminal = std::io::stderr().is_terminal();
        let tasks = vec![
            tokio::spawn(async move {
                let _ = server
                    .with_graceful_shutdown(async move { server_quit.cancelled().await })
                    .await;
            }),
            tokio::spawn(view::run(progress.clone(), terminal, quit.clone())),
            tokio::spawn(rates::run(progress, quit.clone())),
        ];
        Self { quit, tasks }
    }

    async fn stop(self) {
        self.quit.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// Stops the migration on SIGINT or SIGTERM and returns which came.
async fn stop_on_signal(controller: Controller) -> Signal {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    let code = tokio::select! {
        _ = tokio::signal::ctrl_c() => Signal::Interrupt,
        _ = term.recv() => Signal::Terminate,
    };
    tracing::warn!("stop requested: stopping at a consistent point");
    controller.shutdown();
    code
}
