//! A broker connection that goes silent (a broker caught mid-restart, a socket that died without a reset): every
//! wait on it is bounded, so the producer gives the connection up, reconnects and goes on, instead of waiting for
//! ever. The silence is made by a TCP relay between the producer and RabbitMQ that stops relaying the
//! connections it holds, while new connections pass.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use producer::dispatch::Broker;
use producer::dispatch::Dispatch;
use shared::message::{Job, JobKind, Phase};
use shared::model::Mailbox;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use uuid::Uuid;

use crate::support::{self, BROKER};

/// A relay to the test broker whose connections can be silenced.
struct Relay {
    port: u16,
    /// Connections accepted so far.
    accepted: Arc<AtomicU64>,
    /// Connections numbered below this relay nothing more (their sockets stay open).
    silent_below: Arc<AtomicU64>,
}

impl Relay {
    async fn start() -> Self {
        let broker = reqwest::Url::parse(&support::amqp_url()).expect("AMQP URL");
        let upstream = format!(
            "{}:{}",
            broker.host_str().expect("broker host"),
            broker.port().unwrap_or(5672)
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("relay");
        let port = listener.local_addr().expect("address").port();
        let accepted = Arc::new(AtomicU64::new(0));
        let silent_below = Arc::new(AtomicU64::new(0));
        tokio::spawn({
            let accepted = accepted.clone();
            let silent_below = silent_below.clone();
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    let number = accepted.fetch_add(1, Ordering::SeqCst);
                    let Ok(server) = TcpStream::connect(&upstream).await else {
                        continue;
                    };
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    for (from, to) in [
                        (
                            Box::new(client_read) as Box<dyn AsyncReadUnpin>,
                            Box::new(server_write) as Box<dyn AsyncWriteUnpin>,
                        ),
                        (Box::new(server_read), Box::new(client_write)),
                    ] {
                        tokio::spawn(pump(from, to, number, silent_below.clone()));
                    }
                }
            }
        });
        Self {
            port,
            accepted,
            silent_below,
        }
    }

    fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// Every connection open now goes silent: nothing more is relayed either way, and nothing is closed.
    fn silence(&self) {
        self.silent_below
            .store(self.accepted.load(Ordering::SeqCst), Ordering::SeqCst);
    }
}

trait AsyncReadUnpin: tokio::io::AsyncRead + Unpin + Send {}
impl<T: tokio::io::AsyncRead + Unpin + Send> AsyncReadUnpin for T {}
trait AsyncWriteUnpin: tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncWrite + Unpin + Send> AsyncWriteUnpin for T {}

/// Relays bytes until the connection is silenced (then holds both sockets open, relaying nothing) or closed.
async fn pump(
    mut from: Box<dyn AsyncReadUnpin>,
    mut to: Box<dyn AsyncWriteUnpin>,
    number: u64,
    silent_below: Arc<AtomicU64>,
) {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let Ok(read) = from.read(&mut buffer).await else {
            return;
        };
        if read == 0 {
            return;
        }
        if number < silent_below.load(Ordering::SeqCst) {
            let _held = (from, to);
            std::future::pending::<()>().await;
            return;
        }
        if to.write_all(&buffer[..read]).await.is_err() {
            return;
        }
    }
}

fn job(run_id: Uuid) -> Job {
    let mailbox = |name: &str| Mailbox {
        id: name.to_owned(),
        upn: format!("{name}@contoso.onmicrosoft.com"),
    };
    Job::new(
        run_id,
        "contoso.onmicrosoft.com",
        false,
        JobKind::Phase2 {
            central: None,
            mailbox: mailbox("alice"),
        },
    )
}

/// Failed before the fix: the producer waited for the confirm of a publish on a connection that no longer
/// answered, for ever (the test's two minutes ran out). Now the publish gives up after `mq::OPERATION_WAIT`, the
/// connection is replaced, and the job is published on the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_on_a_silent_connection_is_given_up_and_sent_on_a_new_one() {
    let _broker = BROKER.read().await;
    let relay = Relay::start().await;
    let topology = support::private_topology();
    let mut broker = Broker::connect(&relay.url(), topology.clone())
        .await
        .expect("connects through the relay");
    let run_id = Uuid::now_v7();
    broker.begin(run_id).await.expect("begins");
    relay.silence();
    let submitted =
        tokio::time::timeout(Duration::from_secs(120), broker.submit(vec![job(run_id)])).await;
    assert!(
        submitted.is_ok(),
        "the publish waited on the silent connection for two minutes"
    );
    submitted
        .expect("within two minutes")
        .expect("published on a new connection");
    // The job is in its queue, once.
    let connection = support::connect().await;
    let channel = connection.create_channel().await.expect("channel");
    let queue = topology.job_queue(Phase::Phase2);
    let declared = channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("the job queue exists");
    assert_eq!(declared.message_count(), 1);
    let _ = shared::mq::close_connection(&connection, "done").await;
    broker.end().await;
    support::delete_topology(&topology).await;
}

/// A close on a connection that no longer answers is given up after `mq::CLOSE_WAIT` instead of waiting for the
/// broker's close-ok for ever (lapin's own close has no bound): the producer's and workers' reconnects and exits
/// close their old connection first, and a CI run once hung in a test that closed a connection. Checked failing:
/// with `close_channel` calling lapin's close unbounded, the close was still waiting after 15 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_on_a_silent_connection_is_given_up() {
    let _broker = BROKER.read().await;
    let relay = Relay::start().await;
    let connection = shared::mq::connect(&relay.url(), "contactmirror-tests silent close")
        .await
        .expect("connects through the relay");
    let channel = connection.create_channel().await.expect("channel");
    relay.silence();
    let bound = shared::mq::CLOSE_WAIT * 3;
    let closed = tokio::time::timeout(bound, shared::mq::close_channel(&channel, "test")).await;
    assert!(
        matches!(closed, Ok(Err(shared::mq::MqError::TimedOut { .. }))),
        "closing a channel on a silent connection: {closed:?} (Err(Elapsed): still waiting after {bound:?})"
    );
    let closed =
        tokio::time::timeout(bound, shared::mq::close_connection(&connection, "test")).await;
    assert!(
        matches!(closed, Ok(Err(shared::mq::MqError::TimedOut { .. }))),
        "closing a silent connection: {closed:?} (Err(Elapsed): still waiting after {bound:?})"
    );
}
