//! The outbox relay over real sockets: signed webhooks retried until
//! acknowledged, and email to a local SMTP sink that sees each message once.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use boxoffice::domain::time::Clock;
use boxoffice::jobs::outbox::{verify_signature, Relay, RelaySettings};
use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

use crate::helpers::{spawn_app, ADMIN_TOKEN};

const SECRET: &str = "whsec_test_0123456789abcdef";

#[derive(Default)]
struct Receiver {
    /// Requests to refuse (500) before acknowledging.
    refuse: AtomicU32,
    seen: Mutex<Vec<(String, String)>>,
    acknowledged: Mutex<Vec<Value>>,
}

async fn webhook(State(r): State<Arc<Receiver>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let body = String::from_utf8_lossy(&body).into_owned();
    let sig = headers.get("boxoffice-signature").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    r.seen.lock().push((sig, body.clone()));
    if r.refuse.load(Ordering::SeqCst) > 0 {
        r.refuse.fetch_sub(1, Ordering::SeqCst);
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    r.acknowledged.lock().push(serde_json::from_str(&body).unwrap());
    StatusCode::OK
}

/// A minimal SMTP server that accepts every message and keeps it.
async fn smtp_sink() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("smtp://{}", listener.local_addr().unwrap());
    let mail = Arc::new(Mutex::new(Vec::new()));
    let store = mail.clone();
    tokio::spawn(async move {
        loop {
            let Ok((socket, _)) = listener.accept().await else { return };
            let store = store.clone();
            tokio::spawn(async move {
                let (read, mut write) = socket.into_split();
                let mut lines = BufReader::new(read).lines();
                write.write_all(b"220 sink ready\r\n").await.unwrap();
                let mut data: Option<String> = None;
                while let Ok(Some(line)) = lines.next_line().await {
                    if let Some(d) = data.as_mut() {
                        if line == "." {
                            store.lock().push(data.take().unwrap());
                            write.write_all(b"250 queued\r\n").await.unwrap();
                        } else {
                            d.push_str(&line);
                            d.push('\n');
                        }
                        continue;
                    }
                    let verb = line.split_whitespace().next().unwrap_or("").to_ascii_uppercase();
                    let answer: &[u8] = match verb.as_str() {
                        "EHLO" | "HELO" => b"250 sink\r\n",
                        "DATA" => {
                            data = Some(String::new());
                            b"354 go ahead\r\n"
                        }
                        "QUIT" => {
                            let _ = write.write_all(b"221 bye\r\n").await;
                            return;
                        }
                        _ => b"250 ok\r\n",
                    };
                    write.write_all(answer).await.unwrap();
                }
            });
        }
    });
    (url, mail)
}

#[tokio::test]
async fn webhooks_retry_until_acknowledged_and_email_is_sent_once() {
    let app = spawn_app().await;
    let receiver = Arc::new(Receiver::default());
    receiver.refuse.store(3, Ordering::SeqCst);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hook", listener.local_addr().unwrap());
    let router = Router::new().route("/hook", post(webhook)).with_state(receiver.clone());
    tokio::spawn(async move { axum::serve(listener, router).await });
    let (smtp, mail) = smtp_sink().await;
    let relay = Relay::new(
        app.state.store.clone(),
        Arc::new(app.clock.clone()),
        &RelaySettings {
            webhook_url: Some(hook),
            webhook_secret: Some(SECRET.into()),
            smtp_url: Some(smtp),
            email_from: "boxoffice <tickets@example.com>".into(),
            timeout: Duration::from_secs(10),
        },
    )
    .unwrap();

    // A confirmation and a refund, each written with its change.
    let event = app.demo_event(json!({})).await;
    let fan = app.customer("fan@example.com").await;
    let hold = app.hold(&fan, &event, json!({"seats": ["A1"]})).await.id();
    let order = app.checkout(&fan, &hold, "k", "pm_card_visa").await.id();
    let refunded = app.post(&format!("/v1/orders/{order}/refund"), Some(ADMIN_TOKEN), json!({})).await;
    assert_eq!(refunded.body["status"], "refunded");

    let first = relay.run_once().await.unwrap();
    assert_eq!((first.delivered, first.retried), (0, 2), "both webhooks refused the first time");
    let mut passes = 1;
    while !app.state.store.outbox_due(app.clock.now().plus(Duration::from_secs(7200)), 10).await.unwrap().is_empty() {
        app.clock.advance(Duration::from_secs(3600)); // past any backoff
        relay.run_once().await.unwrap();
        passes += 1;
        assert!(passes < 10, "the relay never finished");
    }
    let acknowledged = receiver.acknowledged.lock().clone();
    // Retries are jittered, so the order of arrival is not fixed.
    let mut types: Vec<&str> = acknowledged.iter().map(|e| e["type"].as_str().unwrap()).collect();
    types.sort();
    assert_eq!(types, ["order.confirmed", "order.refunded"]);
    assert!(acknowledged.iter().all(|e| e["data"]["order_id"] == order.as_str()));
    assert_eq!(receiver.seen.lock().len(), 5, "three refusals, two acknowledgements");
    let now = app.clock.now().as_millis() / 1000;
    for (signature, body) in receiver.seen.lock().iter() {
        assert!(
            verify_signature(SECRET.as_bytes(), signature, body, now, Duration::from_secs(24 * 3600)),
            "{signature}"
        );
        assert!(!verify_signature(b"wrong-secret-0123456789", signature, body, now, Duration::from_secs(24 * 3600)));
    }
    let mail = mail.lock().clone();
    assert_eq!(mail.len(), 2, "one email each, not one per webhook retry: {mail:?}");
    assert!(mail[0].contains("To: fan@example.com") && mail[0].contains("Subject: Your tickets"), "{}", mail[0]);
    assert!(mail[1].contains("Subject: Your refund"), "{}", mail[1]);
}
