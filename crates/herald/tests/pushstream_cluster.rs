//! push-stream on two Herald processes sharing one Redis: message markers
//! (`~time~`, `~tag~`) must grow with offsets (`~id~`) along a channel's
//! history whichever node published, or resuming by markers repeats or
//! skips messages.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{Herald, WAIT};

/// The template every node renders: id, time, tag and text, then `;` (a
/// newline would not survive the environment).
const TEMPLATE: &str = "~id~|~time~|~tag~|~text~;";

/// A config file for a node on `url`, keeping history for `h*` channels.
fn config_file(url: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let path = std::env::temp_dir().join(format!(
        "herald-ps-cluster-{}-{nanos}.toml",
        std::process::id()
    ));
    std::fs::write(
        &path,
        format!(
            "[broker]\nkind = \"redis\"\n[broker.redis]\nurls = [{url:?}]\n\
             [[history.rules]]\npattern = \"h*\"\nsize = 10000\nttl = \"10m\"\n"
        ),
    )
    .unwrap();
    path
}

/// Seconds since the Unix epoch of an IMF-fixdate
/// (`Mon, 30 Nov 2026 12:17:34 GMT`).
fn parse_http_date(text: &str) -> u64 {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let f: Vec<&str> = text.split([' ', ':']).collect();
    let day: i64 = f[1].parse().unwrap();
    let month = MONTHS.iter().position(|m| *m == f[2]).unwrap() as i64 + 1;
    let year: i64 = f[3].parse().unwrap();
    let (h, m, s): (i64, i64, i64) = (
        f[4].parse().unwrap(),
        f[5].parse().unwrap(),
        f[6].parse().unwrap(),
    );
    // Days from civil (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    (days * 86_400 + h * 3600 + m * 60 + s) as u64
}

/// Messages of a [`TEMPLATE`] body: id, (seconds, tag), text.
fn parse_marked(body: &str) -> Vec<(u64, (u64, u64), String)> {
    body.split_terminator(';')
        .map(|line| {
            let f: Vec<&str> = line.splitn(4, '|').collect();
            assert_eq!(f.len(), 4, "{line:?}");
            (
                f[0].parse().unwrap(),
                (parse_http_date(f[1]), f[2].parse().unwrap()),
                f[3].to_owned(),
            )
        })
        .collect()
}

async fn get(url: String, headers: &[(&str, String)]) -> reqwest::Response {
    let mut req = reqwest::Client::new().get(url).timeout(WAIT);
    for (name, value) in headers {
        req = req.header(*name, value);
    }
    req.send().await.unwrap()
}

#[test]
fn http_dates_parse() {
    assert_eq!(parse_http_date("Thu, 01 Jan 1970 00:00:01 GMT"), 1);
    assert_eq!(
        parse_http_date("Tue, 04 Jun 2024 10:00:00 GMT"),
        1_717_495_200
    );
    let t = std::time::UNIX_EPOCH + Duration::from_secs(1_717_495_200);
    assert_eq!(http_date(t), "Tue, 04 Jun 2024 10:00:00 GMT");
    let t = std::time::UNIX_EPOCH + Duration::from_secs(1_709_164_799);
    assert_eq!(http_date(t), "Wed, 28 Feb 2024 23:59:59 GMT");
    assert_eq!(parse_http_date(&http_date(t)), 1_709_164_799);
}

/// Two nodes publish to one channel at once. Whatever node serves the
/// history, every message's (time, tag) is after the previous one's, and
/// polling with a message's markers on either node answers exactly the
/// messages after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn markers_grow_with_offsets_when_nodes_publish_at_once() {
    let redis = herald_testkit::redis::RedisServer::start();
    let file = config_file(&redis.url());
    let env = [
        ("HERALD_CONFIG", file.to_str().unwrap()),
        ("HERALD_PUSHSTREAM__MESSAGE_TEMPLATE", TEMPLATE),
    ];
    let n: Vec<Herald> = (0..2).map(|_| Herald::start(&env)).collect();
    let client = reqwest::Client::new();

    const PER_NODE: usize = 100;
    let channel = "hmarks";
    let publishes = (0..2 * PER_NODE).map(|i| {
        let req = client
            .post(format!("http://{}/ps/pub?id={channel}", n[i % 2].addr))
            .body(format!("m{i}"))
            .timeout(WAIT)
            .send();
        async move { req.await.unwrap().status().as_u16() }
    });
    for status in futures_util::future::join_all(publishes).await {
        assert_eq!(status, 200);
    }

    let total = 2 * PER_NODE as u64;
    for node in &n {
        let url = format!("http://{}/ps/lp/{channel}.b{total}", node.addr);
        let body = get(url, &[]).await.text().await.unwrap();
        let history = parse_marked(&body);
        let ids: Vec<u64> = history.iter().map(|m| m.0).collect();
        assert_eq!(ids, (1..=total).collect::<Vec<_>>());
        for w in history.windows(2) {
            assert!(
                w[0].1 < w[1].1,
                "markers go back or repeat: {:?} then {:?}",
                w[0],
                w[1]
            );
        }
        // Resuming from each message's markers, on the other node too.
        for (i, m) in history.iter().enumerate().step_by(7) {
            let other = &n[(i / 7) % 2];
            let since = std::time::UNIX_EPOCH + Duration::from_secs(m.1.0);
            let headers = [
                ("X-Nginx-PushStream-Mode", "polling".to_owned()),
                ("If-Modified-Since", http_date(since)),
                ("If-None-Match", format!("W/{}", m.1.1)),
            ];
            let url = format!("http://{}/ps/sub/{channel}", other.addr);
            let res = get(url, &headers).await;
            if m.0 == total {
                assert_eq!(res.status(), 304);
                continue;
            }
            let got = parse_marked(&res.text().await.unwrap());
            let ids: Vec<u64> = got.iter().map(|m| m.0).collect();
            assert_eq!(ids, (m.0 + 1..=total).collect::<Vec<_>>(), "after {m:?}");
        }
    }
}

/// An IMF-fixdate for `t` (whole seconds).
fn http_date(t: std::time::SystemTime) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{}, {day:02} {} {year} {:02}:{:02}:{:02} GMT",
        DAYS[days.rem_euclid(7) as usize],
        MONTHS[(month - 1) as usize],
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}
