//! The contract between ark's stages: the pod manifest stage0 writes, the stage1 command line
//! (with the lock and the stop signals it hands over), the stage2 config stage1 hands to
//! guest-init, and the per-app exit statuses guest-init reports back. What the stages
//! do to the host (cgroups, mounts, files) is not here: that is `ark-os`. Kept in one small
//! crate so stage0, every stage1 and the static guest-init agree on one definition.
//!
//! The human-readable version of this contract is `docs/pod-manifest.md`; keep both in step.
pub mod agent;
pub mod layout;
pub mod logs;
pub mod manifest;
pub mod net;
pub mod pod_net;
pub mod stage1;
pub mod stage2;
pub mod status;
#[cfg(any(test, feature = "test-support"))]
pub mod test_support;

pub use layout::{guest, PodLayout};
pub use manifest::{
    App, AppLimits, EnvVar, Flavor, ImageRef, KvmOptions, KvmRoot, ManifestError, Mount, NetMode,
    PodLimits, PodManifest, Rlimit, Stage1, Stage1Options, Volume, VolumeKind,
    DEFAULT_CAPABILITIES, KNOWN_CAPABILITIES, MANIFEST_VERSION,
};
pub use pod_net::{
    DnsSource, HostsEntry, NetworkRef, PodDns, PortForward, Protocol, DEFAULT_NETWORK,
};
pub use stage2::{
    AgentTransport, AppCgroup, ControlCommand, ControlTransport, EtcFiles, OnExit, OutputTransport,
    Stage2Config, Stage2Mount, StatusTransport, STAGE2_CMDLINE_KEY, STAGE2_CONFIG_VERSION,
    STAGE2_DISK_DEVICE, STAGE2_DISK_MAX_BYTES,
};
pub use status::{
    pod_exit_code, AppState, AppStatus, PodExit, StatusMessage, EXIT_STAGE1_ERROR, STATUS_ACK,
    STATUS_FILE_SIZE,
};

/// Milliseconds since the Unix epoch, the unit of every timestamp in this contract.
pub fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Formats Unix milliseconds as RFC 3339 UTC (`2024-05-01T12:00:00.123Z`) for humans.
pub fn format_unix_ms(ms: u64) -> String {
    let (date, hms) = civil_utc(ms / 1000);
    format!("{date}T{hms}.{:03}Z", ms % 1000)
}

/// Unix seconds as UTC `("YYYY-MM-DD", "HH:MM:SS")`.
pub(crate) fn civil_utc(secs: u64) -> (String, String) {
    let days = i64::try_from(secs / 86_400).expect("u64::MAX / 86_400 fits in i64");
    let rem = secs % 86_400;
    // Days to civil date (Howard Hinnant's algorithm), valid for every date after 1970.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    (
        format!("{y:04}-{m:02}-{d:02}"),
        format!("{:02}:{:02}:{:02}", rem / 3600, rem / 60 % 60, rem % 60),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_timestamps() {
        assert_eq!(format_unix_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_unix_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(
            format_unix_ms(1_700_000_000_123),
            "2023-11-14T22:13:20.123Z"
        );
    }
}
