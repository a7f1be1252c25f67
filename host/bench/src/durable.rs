//! Durable messages on a real nats-server: the echo-responder behind a `durable = true`
//! subscription (weft in its own process; the host acknowledges after the handler
//! returns) against a native async-nats JetStream durable pull consumer doing the same
//! work. Both publish the message's body to `done.SUBJECT`, then acknowledge; the
//! client measures from storing a message (JetStream publish acknowledged) to its
//! `done` arriving.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use async_nats::jetstream::{self, consumer::pull, stream};
use bytes::Bytes;
use futures::StreamExt;

use crate::messaging::percentiles;
use crate::procs;
use crate::report::{Better, Report, Target, median};
use crate::{Settings, tools::Wasm};

/// Messages handled at once, by weft (`max_in_flight`) and by the native consumer.
const IN_FLIGHT: usize = 64;
/// Messages stored at once in a throughput turn, then drained.
const BATCH: usize = 20_000;
/// Latency turns, the contestants taking turns (see `messaging.rs`).
const TURN: Duration = Duration::from_millis(250);
/// Messages per instance for the reuse contestant.
const REUSE: u32 = 10_000;

const CONTESTANTS: [(&str, &str); 3] = [
    ("native consumer", "bench.durable.native"),
    ("weft, fresh", "bench.durable.wasm"),
    ("weft, reuse", "bench.durable.kept"),
];

/// A JetStream durable pull consumer on `subject` that publishes each message's body to
/// `done.SUBJECT` and then acknowledges it, up to [`IN_FLIGHT`] at once, on a thread
/// and runtime of its own (as weft runs in a process of its own).
fn native_consumer(url: &str, subject: &str) -> Result<()> {
    let (url, subject) = (url.to_string(), subject.to_string());
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("native-consumer".into())
        .spawn(move || {
            crate::native::runtime().block_on(async move {
                let client = async_nats::connect(&url).await.expect("connecting");
                let js = jetstream::new(client.clone());
                let stream = js
                    .get_or_create_stream(stream::Config {
                        name: "bench-native".into(),
                        subjects: vec![subject.clone()],
                        ..Default::default()
                    })
                    .await
                    .expect("creating the native stream");
                let consumer = stream
                    .get_or_create_consumer(
                        "native",
                        pull::Config {
                            durable_name: Some("native".into()),
                            max_ack_pending: 1000,
                            ..Default::default()
                        },
                    )
                    .await
                    .expect("creating the native consumer");
                let messages = consumer.messages().await.expect("pulling");
                let _ = ready_tx.send(());
                let done = format!("done.{subject}");
                messages
                    .for_each_concurrent(IN_FLIGHT, |message| {
                        let (client, done) = (client.clone(), done.clone());
                        async move {
                            let Ok(message) = message else { return };
                            let _ = client.publish(done, message.payload.clone()).await;
                            let _ = message.ack().await;
                        }
                    })
                    .await;
            });
        })?;
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .context("the native consumer did not start within 10 s")
}

/// Stores `body` on `subject` and waits for it on `done`: the round trip in ms.
async fn round_trip(
    js: &jetstream::Context,
    done: &mut async_nats::Subscriber,
    subject: &str,
    body: String,
) -> Result<f64> {
    let start = Instant::now();
    js.publish(subject.to_string(), Bytes::from(body.clone()))
        .await?
        .await
        .context("storing a message")?;
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), done.next())
            .await
            .with_context(|| format!("no done for {subject} within 10 s"))?
            .context("done subscription ended")?;
        if m.payload == body.as_bytes() {
            return Ok(start.elapsed().as_secs_f64() * 1000.0);
        }
    }
}

/// Stores [`BATCH`] messages on `subject` and waits for all their `done`s: messages/s.
async fn drain(
    js: &jetstream::Context,
    done: &mut async_nats::Subscriber,
    subject: &str,
) -> Result<f64> {
    let start = Instant::now();
    let mut stored = Vec::with_capacity(1_000);
    for i in 0..BATCH {
        stored.push(
            js.publish(subject.to_string(), Bytes::from(format!("b{i}")))
                .await?,
        );
        // The client bounds the stores awaiting their acknowledgement: await them in
        // chunks, or a publish waits forever.
        if stored.len() == 1_000 {
            for ack in stored.drain(..) {
                ack.await.context("storing a message")?;
            }
        }
    }
    for ack in stored {
        ack.await.context("storing a message")?;
    }
    let mut seen = 0;
    while seen < BATCH {
        tokio::time::timeout(Duration::from_secs(30), done.next())
            .await
            .with_context(|| format!("{seen} of {BATCH} done on {subject} within 30 s"))?
            .context("done subscription ended")?;
        seen += 1;
    }
    Ok(BATCH as f64 / start.elapsed().as_secs_f64())
}

/// On a real nats-server, weft as its own process.
pub fn nats(settings: &Settings, wasm: &Wasm, report: &mut Report) -> Result<()> {
    println!("\nDurable messages on nats-server:");
    let (_server, url) = procs::nats_server()?;
    let dir = procs::work_dir();
    let manifest = dir.join("durable.toml");
    let component = |name: &str, subject: &str, extra: &str| {
        format!(
            "[components.{name}]\nsource = \"{}\"\nallowed_publish = [\"done.>\"]\n\
             subscriptions = [{{ subject = \"{subject}\", durable = true, max_in_flight = {IN_FLIGHT} }}]\n{extra}",
            wasm.echo_responder.display()
        )
    };
    std::fs::write(
        &manifest,
        format!(
            "name = \"bench-durable\"\n{}{}",
            component("durable", CONTESTANTS[1].1, ""),
            component(
                "durable-kept",
                CONTESTANTS[2].1,
                &format!("limits = {{ requests_per_instance = {REUSE} }}\n")
            ),
        ),
    )?;
    let _weft = procs::weft_up(
        "weft-durable",
        &manifest,
        &dir.join("cache"),
        &["--nats", &url],
    )?;
    native_consumer(&url, CONTESTANTS[0].1)?;

    crate::native::runtime().block_on(async {
        let client = async_nats::connect(&url).await.context("connecting the client")?;
        let js = jetstream::new(client.clone());
        let mut done = Vec::new();
        for (_, subject) in CONTESTANTS {
            done.push(client.subscribe(format!("done.{subject}")).await?);
        }
        client.flush().await?;
        let mut n = 0u64;
        for ((_, subject), done) in CONTESTANTS.iter().zip(&mut done) {
            for _ in 0..50 {
                n += 1;
                round_trip(&js, done, subject, format!("w{n}")).await?; // warm-up
            }
        }
        let turns = (Duration::from_secs(settings.secs).as_millis() / TURN.as_millis()).max(1);
        let mut results: [(Vec<f64>, Vec<f64>, Vec<f64>); 3] = Default::default();
        for round in 1..=settings.rounds {
            let mut samples: [Vec<f64>; 3] = Default::default();
            for _ in 0..turns {
                for (((_, subject), done), samples) in
                    CONTESTANTS.iter().zip(&mut done).zip(&mut samples)
                {
                    let end = Instant::now() + TURN;
                    while Instant::now() < end {
                        n += 1;
                        samples.push(round_trip(&js, done, subject, format!("l{n}")).await?);
                    }
                }
            }
            let mut rates = [0.0; 3];
            for (((_, subject), done), rate) in CONTESTANTS.iter().zip(&mut done).zip(&mut rates) {
                *rate = drain(&js, done, subject).await?;
            }
            for (((label, _), r), (samples, rate)) in CONTESTANTS
                .iter()
                .zip(&mut results)
                .zip(samples.into_iter().zip(rates))
            {
                if samples.is_empty() {
                    bail!("no latency samples for {label}");
                }
                let (p50, p99) = percentiles(samples);
                println!(
                    "    round {round}: {label:<16} p50 {p50:.3} ms  p99 {p99:.3} ms  {rate:.0} msg/s"
                );
                r.0.push(p50);
                r.1.push(p99);
                r.2.push(rate);
            }
        }
        let [native, fresh, reused] = results.map(|(a, b, c)| (median(a), median(b), median(c)));
        let s = "Durable messages (nats-server, JetStream)";
        let cmd = format!(
            "{}s of one message at a time (stored, handled, `done` received), in {} ms turns; then batches of {BATCH} stored and drained, {IN_FLIGHT} handled at once; acknowledged after handling",
            settings.secs,
            TURN.as_millis()
        );
        for (instances, weft, at_least) in [
            ("fresh instance", fresh, 0.5),
            ("instance reuse", reused, 0.8),
        ] {
            let name = |figure: &str| format!("{figure} through a component, {instances}");
            let (p50, p99, rate) = (name("p50 latency"), name("p99 latency"), name("throughput"));
            let (higher, lower, reference) = (Better::Higher, Better::Lower, "native consumer");
            #[rustfmt::skip]
            report.add_rows(s, &cmd, &[
                (&rate, "msg/s", weft.2, reference, native.2, higher, Target::ratio_at_least(at_least)),
                (&p50, "ms", weft.0, reference, native.0, lower, None),
                (&p99, "ms", weft.1, reference, native.1, lower, None),
            ]);
        }
        anyhow::Ok(())
    })
}
