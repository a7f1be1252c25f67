//! The trait-level conformance suites (`weft_test::conformance`) against every backend:
//! embedded, NATS on a real nats-server of the test's own, and the recording world.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use weft_runtime::bus::MessageBus;
use weft_runtime::bus::embedded::EmbeddedBus;
use weft_runtime::bus::nats::NatsBus;
use weft_runtime::kv::KvStore;
use weft_runtime::kv::embedded::EmbeddedKv;
use weft_runtime::kv::nats::NatsKv;
use weft_test::World;
use weft_test::conformance::{kv_store, message_bus};
use weft_test::host::{NatsServer, nats_config};

#[tokio::test]
async fn embedded_bus() {
    message_bus(Arc::new(EmbeddedBus::new()), "conf").await;
}

#[tokio::test]
async fn nats_bus() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let bus = NatsBus::connect(&nats_config(server.url())).await.unwrap();
    message_bus(Arc::new(bus), "conf").await;
}

#[tokio::test]
async fn recording_world_bus() {
    let world: Arc<dyn MessageBus> = Arc::new(World::new().unwrap());
    message_bus(world, "conf").await;
}

#[tokio::test]
async fn embedded_kv() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedKv::open(&dir.path().join("kv.redb")).unwrap();
    kv_store(Arc::new(store), "conf").await;
}

#[tokio::test]
async fn embedded_kv_in_memory() {
    kv_store(Arc::new(EmbeddedKv::in_memory().unwrap()), "conf").await;
}

#[tokio::test]
async fn nats_kv() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let kv = NatsKv::connect(&nats_config(server.url())).await.unwrap();
    kv_store(Arc::new(kv), "conf").await;
}

#[tokio::test]
async fn recording_world_kv() {
    let world: Arc<dyn KvStore> = Arc::new(World::new().unwrap());
    kv_store(world, "conf").await;
}
