//! The PostgreSQL and tansu wrappers start real servers that do what the
//! mobile-push tests rely on, and stop them on drop.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use herald_testkit::kafka::Kafka;
use herald_testkit::postgres::Postgres;

fn refused(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).is_err()
}

#[test]
fn postgres_stores_and_reads_back_rows() {
    let pg = Postgres::start();
    assert_eq!(
        pg.url(),
        format!("postgres://postgres@127.0.0.1:{}/postgres", pg.port())
    );
    pg.psql("CREATE TABLE device (id int PRIMARY KEY, token text NOT NULL)");
    assert_eq!(
        pg.psql("INSERT INTO device VALUES (1, 'a'), (2, 'b c')"),
        "INSERT 0 2"
    );
    assert_eq!(
        pg.psql("SELECT id, token FROM device ORDER BY id"),
        "1|a\n2|b c"
    );
    assert_eq!(pg.psql("SELECT current_user"), "postgres");
    assert_eq!(pg.psql("SHOW fsync"), "off");
}

#[test]
#[should_panic(expected = "relation \"missing\" does not exist")]
fn psql_panics_with_the_server_error() {
    Postgres::start().psql("SELECT * FROM missing");
}

#[test]
fn postgres_servers_are_separate_and_stop_on_drop() {
    let a = Postgres::start();
    let b = Postgres::start();
    assert_ne!(a.port(), b.port());
    a.psql("CREATE TABLE only_in_a (x int)");
    assert_eq!(
        b.psql("SELECT count(*) FROM pg_tables WHERE tablename = 'only_in_a'"),
        "0"
    );
    let port = a.port();
    drop(a);
    assert!(
        refused(port),
        "postgres still listening on {port} after drop"
    );
    assert_eq!(b.psql("SELECT 1"), "1");
}

/// Sends a Kafka ApiVersions v0 request and returns the response's
/// correlation id, error code and the API keys the broker supports.
fn api_versions(bootstrap: &str) -> (i32, i16, Vec<i16>) {
    let mut s = TcpStream::connect(bootstrap).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let client = b"herald-testkit";
    let mut body = Vec::new();
    body.extend(18i16.to_be_bytes()); // ApiVersions
    body.extend(0i16.to_be_bytes()); // version 0
    body.extend(0x0102_0304i32.to_be_bytes()); // correlation id
    body.extend((client.len() as i16).to_be_bytes());
    body.extend(client);
    s.write_all(&(body.len() as i32).to_be_bytes()).unwrap();
    s.write_all(&body).unwrap();

    let mut len = [0u8; 4];
    s.read_exact(&mut len).unwrap();
    let mut resp = vec![0u8; i32::from_be_bytes(len) as usize];
    s.read_exact(&mut resp).unwrap();
    let i16_at = |at: usize| i16::from_be_bytes([resp[at], resp[at + 1]]);
    let i32_at = |at: usize| i32::from_be_bytes(resp[at..at + 4].try_into().unwrap());
    let count = i32_at(6) as usize;
    let keys = (0..count).map(|i| i16_at(10 + 6 * i)).collect();
    (i32_at(0), i16_at(4), keys)
}

#[test]
fn kafka_speaks_kafka_and_refuses_duplicate_topics() {
    let kafka = Kafka::start(&["pushes"]);
    assert_eq!(kafka.bootstrap(), format!("127.0.0.1:{}", kafka.port()));

    let (correlation, error, keys) = api_versions(&kafka.bootstrap());
    assert_eq!(correlation, 0x0102_0304);
    assert_eq!(error, 0);
    for key in [0, 1, 3, 19] {
        assert!(keys.contains(&key), "API key {key} missing from {keys:?}");
    }

    // start() created the topic, so creating it again is refused...
    let err = kafka.try_create_topic("pushes").unwrap_err();
    assert!(err.contains("Topic with this name already exists"), "{err}");
    // ...while a new name is fine, and the broker keeps serving.
    kafka.create_topic("receipts");
    assert!(kafka.try_create_topic("receipts").is_err());
    assert_eq!(api_versions(&kafka.bootstrap()).1, 0);
}

#[test]
fn kafka_stops_on_drop() {
    let kafka = Kafka::start(&[]);
    let port = kafka.port();
    assert!(!refused(port));
    drop(kafka);
    assert!(refused(port), "tansu still listening on {port} after drop");
}
