//! What tend writes to the API server stays within what a real one accepts, even when
//! what it reports comes from AWS unabridged.

mod support;

use support::faults::FaultRule;
use support::rig::Rig;

/// AWS appends an encoded authorization failure message to `UnauthorizedOperation`
/// errors; it runs to well over a kilobyte.
fn encoded_authorization_failure() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let encoded: String = (0..1400)
        .map(|i| ALPHABET[(i * 7) % ALPHABET.len()] as char)
        .collect();
    format!(
        "You are not authorized to perform this operation. Encoded authorization failure message: {encoded}"
    )
}

#[tokio::test]
async fn an_authorization_failure_with_a_long_encoded_message_is_still_announced() {
    let rig = Rig::start().await;
    rig.proxy.inject(FaultRule::on("RunInstances").error_code(
        403,
        "UnauthorizedOperation",
        &encoded_authorization_failure(),
    ));
    rig.create(&rig.ec2_workspace("dev")).await;
    rig.wait_ws("dev", "Ready=False AwsAuthFailed", |w| {
        w.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.reason == "AwsAuthFailed")
        })
    })
    .await;
    // The Warning event must reach the API server: a note over 1 KiB is refused.
    rig.wait_event("dev", "AwsAuthFailed").await;
}
