//! `ark app` in a kvm pod (issue 13), on ONE VM (a boot takes minutes here): the sandbox boots
//! with no app and stays up; apps added later appear in the guest through the `apps/`
//! directory shared from boot (no new device); the same lifecycle and refusals as ns/fly;
//! `ark stop` ends every app with its status recorded.

use ark_tests::pods::kvm_pods_unavailable;
use ark_tests::sandbox::{self, Sandbox};
use ark_tests::skip;

#[test]
fn app_lifecycle_in_kvm() {
    if let Some(why) = kvm_pods_unavailable() {
        skip!("{why}");
    }
    let sb = Sandbox::start("kvm");
    sandbox::lifecycle(&sb);
    let (env, uuid) = sb.stop();
    sandbox::stopped(&env, &uuid);
}
