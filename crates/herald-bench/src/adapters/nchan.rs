//! Nchan (as configured by `start-nchan.sh`): subscribe at `/sub/<ch>` (or `/msub/<a>,<b>`),
//! publish the raw body with `POST /pub/<ch>`.

pub(crate) fn sub_path(channels: &[String]) -> String {
    match channels {
        [one] => format!("/sub/{one}"),
        many => format!("/msub/{}", many.join(",")),
    }
}

/// `(path, body)` of the publish request: the payload is the raw body.
pub(crate) fn publish(channel: &str, payload: &str) -> (String, String) {
    (format!("/pub/{channel}"), payload.to_owned())
}
