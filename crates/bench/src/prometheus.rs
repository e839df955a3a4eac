//! netsyncd's Prometheus metrics (`--metrics-listen`): one scrape of
//! `/metrics` over HTTP/1.1, and the sum of a metric's samples in it.

use std::net::SocketAddr;

use anyhow::{Context, ensure};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// The text exposition served at `http://addr/metrics`.
pub async fn scrape(addr: SocketAddr) -> anyhow::Result<String> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("cannot connect to the metrics endpoint {addr}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("metrics endpoint handshake")?;
    // The connection is driven by its own task for this one request, and
    // ended with it.
    let driver = tokio::spawn(connection);
    let request = http::Request::get("/metrics")
        .header(http::header::HOST, addr.to_string())
        .body(Empty::<Bytes>::new())?;
    let answer = async {
        let response = sender.send_request(request).await.context("GET /metrics")?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .context("reading /metrics")?
            .to_bytes();
        ensure!(status.is_success(), "GET /metrics answered {status}");
        String::from_utf8(body.to_vec()).context("/metrics is not UTF-8")
    }
    .await;
    driver.abort();
    answer
}

/// The sum of every sample of metric `name` (all label sets) in a text
/// exposition; `None` if it has none.
pub fn sum(exposition: &str, name: &str) -> Option<f64> {
    sum_where(exposition, name, &[])
}

/// The sum of the samples of metric `name` whose labels include each of
/// `labels` (`("grpc_method", "SetIntent")`: `grpc_method="SetIntent"`); `None` if none
/// has them.
pub fn sum_where(exposition: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let wanted: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    let mut total = None;
    for line in exposition.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        // `name value`, `name{labels} value` or `name{labels} value timestamp`;
        // anything else (`name_bucket`, a comment) is another metric.
        let value = if let Some(labelled) = rest.strip_prefix('{') {
            labelled.rsplit_once('}').and_then(|(set, value)| {
                let pairs: Vec<&str> = set.split(',').collect();
                wanted
                    .iter()
                    .all(|w| pairs.contains(&w.as_str()))
                    .then_some(value)
            })
        } else if rest.starts_with([' ', '\t']) && wanted.is_empty() {
            Some(rest)
        } else {
            None
        };
        let Some(value) = value.and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        else {
            continue;
        };
        *total.get_or_insert(0.0) += value;
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_of_a_metric_are_summed() {
        let text = "\
# HELP netsync_store_transactions Transactions committed.
# TYPE netsync_store_transactions counter
netsync_store_transactions_total 1200
netsync_store_transactions_total_bytes 7
netsync_sync_commits_total{datastore=\"a\"} 3
netsync_sync_commits_total{datastore=\"b}\"} 4 1700000000
netsync_sync_commits_created{datastore=\"a\"} 1.5e9
";
        assert_eq!(sum(text, "netsync_store_transactions_total"), Some(1200.0));
        assert_eq!(sum(text, "netsync_sync_commits_total"), Some(7.0));
        assert_eq!(sum(text, "netsync_sync_commits"), None);
        assert_eq!(sum("", "netsync_store_transactions_total"), None);
        let a = [("datastore", "a")];
        assert_eq!(sum_where(text, "netsync_sync_commits_total", &a), Some(3.0));
        assert_eq!(
            sum_where(text, "netsync_store_transactions_total", &a),
            None
        );
    }

    #[test]
    fn histogram_buckets_are_picked_by_label() {
        let text = "\
grpc_server_handling_seconds_bucket{grpc_service=\"s\",grpc_method=\"SetIntent\",le=\"0.1\"} 5
grpc_server_handling_seconds_bucket{grpc_service=\"s\",grpc_method=\"SetIntent\",le=\"+Inf\"} 6
grpc_server_handling_seconds_bucket{grpc_service=\"s\",grpc_method=\"GetIntent\",le=\"0.1\"} 9
grpc_server_handling_seconds_bucket{grpc_service=\"t\",grpc_method=\"SetIntent\",le=\"0.1\"} 1
";
        let bucket = "grpc_server_handling_seconds_bucket";
        let set = ("grpc_method", "SetIntent");
        assert_eq!(sum_where(text, bucket, &[set, ("le", "0.1")]), Some(6.0));
        assert_eq!(sum_where(text, bucket, &[set, ("le", "+Inf")]), Some(6.0));
        assert_eq!(
            sum_where(text, bucket, &[("grpc_method", "DeleteIntent")]),
            None
        );
    }
}
