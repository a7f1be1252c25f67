//! Messaging request/reply through the echo-responder component against a native
//! responder doing the same work: on a real nats-server (weft in its own process) and on
//! the embedded bus (weft in this process).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use futures::future::BoxFuture;
use weft_runtime::bus::{Message, MessageBus};
use weft_runtime::spec::{ComponentSpec, SubscriptionSpec};

use crate::procs;
use crate::report::{Better, Report, Target, median};
use crate::{Settings, tools::Wasm};

/// Requests in flight at once in the throughput run.
const IN_FLIGHT: usize = 32;
const PAYLOAD: &[u8] = b"ping";

type Requester = Arc<dyn Fn(String) -> BoxFuture<'static, Result<Bytes>> + Send + Sync>;

/// Latency is measured in turns this long, the contestants taking turns, so that a
/// noisy second on the shared machine hits all of them alike.
const TURN: Duration = Duration::from_millis(250);

/// Sequential requests on `subject` for `duration`: adds each round trip, in
/// milliseconds, to `samples`.
async fn round_trips(
    request: &Requester,
    subject: &str,
    duration: Duration,
    samples: &mut Vec<f64>,
) -> Result<()> {
    let end = Instant::now() + duration;
    while Instant::now() < end {
        let start = Instant::now();
        let reply = request(subject.to_string()).await?;
        samples.push(start.elapsed().as_secs_f64() * 1000.0);
        if !reply.ends_with(PAYLOAD) {
            bail!("unexpected reply on {subject}: {reply:?}");
        }
    }
    Ok(())
}

/// p50 and p99 of `samples`.
pub fn percentiles(mut samples: Vec<f64>) -> (f64, f64) {
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize];
    (at(0.5), at(0.99))
}

/// `IN_FLIGHT` requesters for `duration`: adds the replies and the time they took to
/// `tally`.
async fn burst(
    request: &Requester,
    subject: &str,
    duration: Duration,
    tally: &mut (u64, Duration),
) -> Result<()> {
    let start = Instant::now();
    let end = start + duration;
    let mut tasks = Vec::new();
    for _ in 0..IN_FLIGHT {
        let (request, subject) = (request.clone(), subject.to_string());
        tasks.push(tokio::spawn(async move {
            let mut done = 0u64;
            while Instant::now() < end {
                request(subject.clone()).await?;
                done += 1;
            }
            anyhow::Ok(done)
        }));
    }
    for task in tasks {
        tally.0 += task.await??;
    }
    tally.1 += start.elapsed();
    Ok(())
}

/// Runs the contestants round by round and reports weft against the native one. In each
/// round they take turns of [`TURN`] at latency (sequential requests), then at
/// throughput (bursts of `IN_FLIGHT` requesters), `settings.secs` of each in all.
async fn compare(
    settings: &Settings,
    backend: &str,
    request: Requester,
    report: &mut Report,
) -> Result<()> {
    let contestants = [
        ("native responder", "bench.native.echo"),
        ("weft, fresh", "bench.wasm.echo"),
        ("weft, reuse", "bench.kept.echo"),
    ];
    for (_, subject) in contestants {
        round_trips(&request, subject, Duration::from_secs(1), &mut Vec::new()).await?; // warm-up
    }
    let turns = (Duration::from_secs(settings.secs).as_millis() / TURN.as_millis()).max(1);
    let mut results: [(Vec<f64>, Vec<f64>, Vec<f64>); 3] = Default::default();
    for round in 1..=settings.rounds {
        let mut samples: [Vec<f64>; 3] = Default::default();
        for _ in 0..turns {
            for ((_, subject), samples) in contestants.iter().zip(&mut samples) {
                round_trips(&request, subject, TURN, samples).await?;
            }
        }
        let mut tallies: [(u64, Duration); 3] = Default::default();
        for _ in 0..turns {
            for ((_, subject), tally) in contestants.iter().zip(&mut tallies) {
                burst(&request, subject, TURN, tally).await?;
            }
        }
        for (((label, _), r), (samples, (replies, took))) in contestants
            .iter()
            .zip(&mut results)
            .zip(samples.into_iter().zip(tallies))
        {
            let (p50, p99) = percentiles(samples);
            let rate = replies as f64 / took.as_secs_f64();
            println!(
                "    round {round}: {label:<18} p50 {p50:.3} ms  p99 {p99:.3} ms  {rate:.0} msg/s"
            );
            r.0.push(p50);
            r.1.push(p99);
            r.2.push(rate);
        }
    }
    let [native, fresh, reused] = results.map(|(a, b, c)| (median(a), median(b), median(c)));
    let s = format!("Messaging request/reply ({backend})");
    let cmd = format!(
        "{}s of sequential requests, then {}s with {IN_FLIGHT} in flight; in {} ms turns",
        settings.secs,
        settings.secs,
        TURN.as_millis()
    );
    for (instances, weft) in [("fresh instance", fresh), ("instance reuse", reused)] {
        let name = |figure: &str| format!("{figure} through a component, {instances}");
        let (p50, p99, rate) = (name("p50 latency"), name("p99 latency"), name("throughput"));
        let (higher, lower, reference) = (Better::Higher, Better::Lower, "native responder");
        #[rustfmt::skip]
        report.add_rows(&s, &cmd, &[
            (&p50, "ms", weft.0, reference, native.0, lower, Target::ratio_at_most(1.5)),
            (&p99, "ms", weft.1, reference, native.1, lower, Target::ratio_at_most(1.5)),
            (&rate, "msg/s", weft.2, reference, native.2, higher, None),
        ]);
    }
    Ok(())
}

/// The echo-responder on `subject`, with a fresh instance per message or (`reuse`) kept
/// ones.
fn responder_spec(subject: &str, reuse: bool) -> ComponentSpec {
    let mut spec = ComponentSpec {
        subscriptions: vec![SubscriptionSpec {
            max_in_flight: 64,
            ..SubscriptionSpec::to(subject)
        }],
        ..ComponentSpec::default()
    };
    if reuse {
        spec.limits.requests_per_instance = REUSE;
    }
    spec
}

/// Messages per instance for the reuse contestant.
const REUSE: u32 = 10_000;

/// On a real nats-server, weft as its own process.
pub fn nats(settings: &Settings, wasm: &Wasm, report: &mut Report) -> Result<()> {
    println!("\nMessaging on nats-server:");
    let (_server, url) = procs::nats_server()?;
    let dir = procs::work_dir();
    let manifest = dir.join("messaging.toml");
    std::fs::write(
        &manifest,
        format!(
            "name = \"bench-messaging\"\n\
             [components.responder]\nsource = \"{0}\"\nsubscriptions = [{{ subject = \"bench.wasm.>\" }}]\n\
             [components.responder-kept]\nsource = \"{0}\"\nsubscriptions = [{{ subject = \"bench.kept.>\" }}]\n\
             limits = {{ requests_per_instance = {REUSE} }}\n",
            wasm.echo_responder.display()
        ),
    )?;
    let _weft = procs::weft_up(
        "weft-messaging",
        &manifest,
        &dir.join("cache"),
        &["--nats", &url],
    )?;
    crate::native::nats_responder(&url, "bench.native.echo")?;

    let runtime = crate::native::runtime();
    runtime.block_on(async {
        let client = async_nats::connect(&url)
            .await
            .context("connecting the client")?;
        let request: Requester = Arc::new(move |subject| {
            let client = client.clone();
            Box::pin(async move {
                let reply = tokio::time::timeout(
                    Duration::from_secs(5),
                    client.request(subject, Bytes::from_static(PAYLOAD)),
                )
                .await
                .context("request timed out")??;
                Ok(reply.payload)
            })
        });
        compare(settings, "nats-server", request, report).await
    })
}

/// On the embedded bus, weft in this process.
pub fn embedded(settings: &Settings, wasm: &Wasm, report: &mut Report) -> Result<()> {
    println!("\nMessaging on the embedded bus (in-process):");
    let dir = procs::work_dir();
    let runtime = crate::native::runtime();
    runtime.block_on(async {
        let data = tempfile::tempdir()?;
        let config = weft_runtime::HostConfig {
            listen: "127.0.0.1:0".parse()?,
            admin_listen: "127.0.0.1:0".parse()?,
            cache_dir: Some(dir.join("cache")),
            data_dir: data.path().to_path_buf(),
            ..weft_runtime::HostConfig::default()
        };
        let host = weft_runtime::Host::start(config).await?;
        let wasm_bytes = std::fs::read(&wasm.echo_responder)?;
        let wasm_bytes = bytes::Bytes::from(wasm_bytes);
        host.deployments()
            .deploy(
                "responder",
                responder_spec("bench.wasm.>", false),
                wasm_bytes.clone(),
            )
            .await?;
        host.deployments()
            .deploy(
                "responder-kept",
                responder_spec("bench.kept.>", true),
                wasm_bytes,
            )
            .await?;
        let bus: Arc<dyn MessageBus> = host.deployments().backends().bus.clone();

        let mut sub = bus
            .subscribe("bench.native.echo".into(), Some("native".into()), 1024)
            .await?;
        let native_bus = bus.clone();
        tokio::spawn(async move {
            while let Some(message) = sub.messages.recv().await {
                if let Some(reply_to) = message.reply_to {
                    let mut body = b"-:".to_vec();
                    body.extend_from_slice(&message.body);
                    let reply = Message {
                        subject: reply_to,
                        body: body.into(),
                        ..Message::default()
                    };
                    let _ = native_bus.publish(reply).await;
                }
            }
        });

        let request: Requester = Arc::new(move |subject| {
            let bus = bus.clone();
            Box::pin(async move {
                let reply = bus
                    .request(subject, Bytes::from_static(PAYLOAD), Duration::from_secs(5))
                    .await?;
                Ok(reply.body)
            })
        });
        compare(settings, "embedded bus", request, report).await?;
        host.shutdown().await;
        anyhow::Ok(())
    })
}
