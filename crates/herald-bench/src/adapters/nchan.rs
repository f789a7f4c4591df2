//! Nchan (as configured by `start-nchan.sh`): subscribe at `/sub/<ch>` (or `/msub/<a>,<b>`),
//! publish the raw body with `POST /pub/<ch>`.

use crate::net::Endpoint;

pub(crate) fn sub_path(channels: &[String]) -> String {
    match channels {
        [one] => format!("/sub/{one}"),
        many => format!("/msub/{}", many.join(",")),
    }
}

pub(crate) fn publish(
    http: &reqwest::Client,
    ep: &Endpoint,
    channel: &str,
    payload: &str,
) -> reqwest::RequestBuilder {
    http.post(ep.http(&format!("/pub/{channel}")))
        .header("content-type", "application/json")
        .body(payload.to_owned())
}
