//! Asking guest-init to stop the pod: a host→guest vsock connection through the hybrid vsock
//! socket (`CONNECT <port>`), then a `stop` line on guest-init's control port.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use ark_pod_spec::stage2::ControlCommand;

/// Sends `stop <grace>` to guest-init. Fails while guest-init is not listening yet (still
/// booting); the caller retries.
pub fn request_stop(vsock_uds: &Path, port: u32, grace_secs: u64) -> io::Result<()> {
    let stream = UnixStream::connect(vsock_uds)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut writer = stream.try_clone()?;
    writer.write_all(format!("CONNECT {port}\n").as_bytes())?;
    let mut reply = String::new();
    BufReader::new(stream).read_line(&mut reply)?;
    if !reply.starts_with("OK ") {
        return Err(io::Error::new(
            io::ErrorKind::ConnectionRefused,
            format!("guest control port {port}: {:?}", reply.trim_end()),
        ));
    }
    let cmd = ControlCommand::Stop {
        grace_secs: Some(grace_secs),
    };
    writer.write_all(cmd.to_line().as_bytes())?;
    Ok(())
}
