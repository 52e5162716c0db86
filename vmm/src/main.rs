//! `ark-vmm`: boots one microVM and exits with the guest's outcome.
//!
//! Exit status: 0 the guest requested a stop (poweroff; reboot and panic with `reboot=k panic=-1`),
//! 1 VMM error (a seccomp violation too: one line naming the syscall), 2 guest triple fault,
//! 3 stopped by the host (SIGTERM/SIGINT).

use std::path::PathBuf;
use std::sync::atomic::{AtomicI32, Ordering};

use clap::Parser;
use vmm::{
    BlockConfig, FsConfig, NetConfig, RateLimit, SerialConfig, StopHandle, TapSource,
    TokenBucketConfig, VmConfig, VsockConfig,
};

#[derive(Parser, Debug)]
#[command(
    name = "ark-vmm",
    version,
    about = "ark's KVM microVM monitor: boots one Linux guest"
)]
struct Args {
    /// JSON file with the VM settings (same fields as the flags); flags override it.
    #[arg(long, value_name = "FILE.json")]
    config: Option<PathBuf>,
    /// Guest kernel: ELF vmlinux (PVH entry used when present) or bzImage.
    #[arg(long, value_name = "PATH")]
    kernel: Option<PathBuf>,
    /// Kernel command line (virtio-mmio device entries are appended).
    #[arg(long, value_name = "STR")]
    cmdline: Option<String>,
    /// Guest memory in MiB.
    #[arg(long, value_name = "MIB")]
    memory: Option<u32>,
    /// Number of vCPUs.
    #[arg(long, value_name = "N")]
    vcpus: Option<u8>,
    /// initramfs to load.
    #[arg(long, value_name = "PATH")]
    initrd: Option<PathBuf>,
    /// virtio-blk disk, repeatable; `,ro` for read-only.
    #[arg(long, value_name = "PATH[,ro]")]
    blk: Vec<String>,
    /// virtio-fs share, repeatable; `,ro` for read-only.
    #[arg(long, value_name = "TAG=DIR[,ro]")]
    fs: Vec<String>,
    /// virtio-net device on a TAP, repeatable: a TAP interface by name (opened, or created, in
    /// ark-vmm's network namespace) or an inherited descriptor of one opened with IFF_VNET_HDR;
    /// optional MTU and token-bucket limits (RATE per second, BURST default RATE).
    #[arg(
        long,
        value_name = "tap=NAME|fd=N,mac=MAC[,mtu=N][,rx-bps=RATE[:BURST]][,rx-ops=..][,tx-bps=..][,tx-ops=..]"
    )]
    net: Vec<String>,
    /// virtio-vsock device: guest CID and the host Unix socket path.
    #[arg(long, value_name = "CID,UDS_PATH")]
    vsock: Option<String>,
    /// Guest serial console output.
    #[arg(long, value_name = "stdout|none|file=PATH")]
    serial: Option<String>,
    /// virtio-console device (guest /dev/hvc0) and where its output goes.
    #[arg(long, value_name = "stdout|none|file=PATH")]
    console: Option<String>,
    /// No virtio-rng device.
    #[arg(long)]
    no_rng: bool,
    /// No seccomp filters: neither the vCPU and event-loop allowlists nor the process denylist
    /// (debugging only).
    #[arg(long)]
    no_seccomp: bool,
}

fn parse_blk(s: &str) -> Result<BlockConfig, String> {
    let (path, ro) = match s.strip_suffix(",ro") {
        Some(p) => (p, true),
        None => (s, false),
    };
    if path.is_empty() {
        return Err(format!("--blk {s:?}: expected PATH[,ro]"));
    }
    Ok(BlockConfig {
        path: path.into(),
        read_only: ro,
    })
}

fn parse_fs(s: &str) -> Result<FsConfig, String> {
    let (spec, ro) = match s.strip_suffix(",ro") {
        Some(p) => (p, true),
        None => (s, false),
    };
    match spec.split_once('=') {
        Some((tag, dir)) if !tag.is_empty() && !dir.is_empty() => Ok(FsConfig {
            tag: tag.into(),
            dir: dir.into(),
            read_only: ro,
            shared: false,
        }),
        _ => Err(format!("--fs {s:?}: expected TAG=DIR[,ro]")),
    }
}

fn parse_vsock(s: &str) -> Result<VsockConfig, String> {
    match s.split_once(',') {
        Some((cid, path)) if !path.is_empty() => Ok(VsockConfig {
            guest_cid: cid
                .parse()
                .map_err(|_| format!("--vsock {s:?}: CID must be a number"))?,
            uds_path: path.into(),
        }),
        _ => Err(format!("--vsock {s:?}: expected CID,UDS_PATH")),
    }
}

fn parse_net(s: &str) -> Result<NetConfig, String> {
    let err = |why: &str| format!("--net {s:?}: {why}");
    let (mut tap, mut mac, mut mtu) = (None, None, None);
    let (mut rx_rate, mut tx_rate) = (RateLimit::default(), RateLimit::default());
    for part in s.split(',') {
        let (key, value) = part
            .split_once('=')
            .ok_or_else(|| err(&format!("{part:?} is not KEY=VALUE")))?;
        match key {
            "tap" => tap = Some(TapSource::Name(value.to_string())),
            "fd" => {
                let fd = value.parse().map_err(|_| err("fd must be a number"))?;
                tap = Some(TapSource::Fd(fd));
            }
            "mac" => mac = Some(value.parse().map_err(|e: String| err(&e))?),
            "mtu" => mtu = Some(value.parse().map_err(|_| err("mtu must be 1..65535"))?),
            "rx-bps" => rx_rate.bytes = Some(parse_bucket(value).map_err(|e| err(&e))?),
            "rx-ops" => rx_rate.ops = Some(parse_bucket(value).map_err(|e| err(&e))?),
            "tx-bps" => tx_rate.bytes = Some(parse_bucket(value).map_err(|e| err(&e))?),
            "tx-ops" => tx_rate.ops = Some(parse_bucket(value).map_err(|e| err(&e))?),
            _ => return Err(err(&format!("unknown key {key:?}"))),
        }
    }
    let limit = |r: RateLimit| (r != RateLimit::default()).then_some(r);
    Ok(NetConfig {
        tap: tap.ok_or_else(|| err("tap=NAME or fd=N is required"))?,
        mac: mac.ok_or_else(|| err("mac=MAC is required"))?,
        mtu,
        rx_rate: limit(rx_rate),
        tx_rate: limit(tx_rate),
    })
}

/// `RATE[:BURST]`.
fn parse_bucket(s: &str) -> Result<TokenBucketConfig, String> {
    let num = |v: &str| {
        v.parse::<u64>()
            .map_err(|_| format!("{s:?}: expected RATE[:BURST] (numbers)"))
    };
    Ok(match s.split_once(':') {
        Some((rate, burst)) => TokenBucketConfig {
            rate: num(rate)?,
            burst: Some(num(burst)?),
        },
        None => TokenBucketConfig {
            rate: num(s)?,
            burst: None,
        },
    })
}

fn parse_serial(s: &str) -> Result<SerialConfig, String> {
    match s {
        "stdout" => Ok(SerialConfig::Stdout),
        "stderr" => Ok(SerialConfig::Stderr),
        "none" => Ok(SerialConfig::None),
        _ => match s.strip_prefix("file=") {
            Some(p) if !p.is_empty() => Ok(SerialConfig::File(p.into())),
            _ => Err(format!(
                "--serial {s:?}: expected stdout, stderr, none or file=PATH"
            )),
        },
    }
}

fn config_from(args: Args) -> Result<VmConfig, String> {
    let mut c = match &args.config {
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
            serde_json::from_str::<VmConfig>(&text).map_err(|e| format!("{}: {e}", p.display()))?
        }
        None => VmConfig::new(
            args.kernel
                .clone()
                .ok_or("--kernel is required (or --config FILE.json with \"kernel\")")?,
        ),
    };
    if let Some(k) = args.kernel {
        c.kernel = k;
    }
    if let Some(v) = args.cmdline {
        c.cmdline = v;
    }
    if let Some(v) = args.memory {
        c.memory_mib = v;
    }
    if let Some(v) = args.vcpus {
        c.vcpus = v;
    }
    if let Some(v) = args.initrd {
        c.initrd = Some(v);
    }
    if !args.blk.is_empty() {
        c.blk = args
            .blk
            .iter()
            .map(|s| parse_blk(s))
            .collect::<Result<_, _>>()?;
    }
    if !args.fs.is_empty() {
        c.fs = args
            .fs
            .iter()
            .map(|s| parse_fs(s))
            .collect::<Result<_, _>>()?;
    }
    if !args.net.is_empty() {
        c.nets = args
            .net
            .iter()
            .map(|s| parse_net(s))
            .collect::<Result<_, _>>()?;
    }
    if let Some(v) = args.vsock {
        c.vsock = Some(parse_vsock(&v)?);
    }
    if let Some(v) = args.serial {
        c.serial = parse_serial(&v)?;
    }
    if let Some(v) = args.console {
        c.console = Some(parse_serial(&v).map_err(|e| e.replace("--serial", "--console"))?);
    }
    if args.no_rng {
        c.rng = false;
    }
    if args.no_seccomp {
        c.seccomp = false;
    }
    c.validate().map_err(|e| format!("invalid config: {e}"))?;
    Ok(c)
}

/// The stop eventfd, for the SIGTERM/SIGINT handler (writing an eventfd is async-signal-safe).
static STOP_FD: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_stop_signal(_: libc::c_int) {
    let fd = STOP_FD.load(Ordering::Relaxed);
    if fd >= 0 {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a valid u64 to an eventfd.
        unsafe { libc::write(fd, &one as *const u64 as *const libc::c_void, 8) };
    }
}

fn main() {
    if let Err(code) = ark_os::fds::cloexec_inherited_or_report("ark-vmm") {
        std::process::exit(code);
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ARK_VMM_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();

    let args = Args::parse();
    let config = match config_from(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ark-vmm: {e}");
            std::process::exit(vmm::EXIT_CODE_VMM_ERROR);
        }
    };
    let stop = match StopHandle::new() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ark-vmm: eventfd: {e}");
            std::process::exit(vmm::EXIT_CODE_VMM_ERROR);
        }
    };
    STOP_FD.store(stop.raw_fd(), Ordering::SeqCst);
    for sig in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: installs a handler that only does an async-signal-safe write.
        unsafe { libc::signal(sig, on_stop_signal as *const () as libc::sighandler_t) };
    }
    if config.seccomp {
        // Before any thread exists, so every VMM thread inherits it.
        if let Err(e) = vmm::seccomp::vmm_denylist().and_then(|f| vmm::seccomp::apply(&f)) {
            eprintln!("ark-vmm: seccomp: {e}");
            std::process::exit(vmm::EXIT_CODE_VMM_ERROR);
        }
    }
    match vmm::run_with_stop(config, stop) {
        Ok(exit) => {
            tracing::info!("VM ended: {exit:?}");
            std::process::exit(exit.exit_code());
        }
        Err(e) => {
            eprintln!("ark-vmm: {e}");
            std::process::exit(vmm::EXIT_CODE_VMM_ERROR);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_parsers() {
        assert_eq!(
            parse_blk("/a.img,ro").unwrap(),
            BlockConfig {
                path: "/a.img".into(),
                read_only: true
            }
        );
        assert!(!parse_blk("/a.img").unwrap().read_only);
        assert!(parse_blk(",ro").is_err());
        let f = parse_fs("root=/srv/x,ro").unwrap();
        assert_eq!((f.tag.as_str(), f.read_only), ("root", true));
        assert!(parse_fs("=/x").is_err());
        assert!(parse_fs("tag").is_err());
        assert_eq!(parse_vsock("3,/tmp/v.sock").unwrap().guest_cid, 3);
        assert!(parse_vsock("x,/tmp/v").is_err());
        assert!(parse_vsock("3").is_err());
        assert_eq!(
            parse_serial("file=/tmp/s").unwrap(),
            SerialConfig::File("/tmp/s".into())
        );
        assert!(parse_serial("file=").is_err());
        assert!(parse_serial("tty").is_err());
        let n =
            parse_net("tap=tap0,mac=02:00:00:00:00:01,mtu=1400,rx-bps=1000:64,tx-ops=10").unwrap();
        assert_eq!(n.tap, TapSource::Name("tap0".into()));
        assert_eq!(n.mac.0, [2, 0, 0, 0, 0, 1]);
        assert_eq!(n.mtu, Some(1400));
        let rx = n.rx_rate.unwrap();
        assert_eq!(
            rx.bytes,
            Some(TokenBucketConfig {
                rate: 1000,
                burst: Some(64)
            })
        );
        assert_eq!(rx.ops, None);
        assert_eq!(n.tx_rate.unwrap().ops.unwrap().rate, 10);
        let n = parse_net("fd=5,mac=02:00:00:00:00:01").unwrap();
        assert_eq!(
            (n.tap, n.rx_rate, n.tx_rate),
            (TapSource::Fd(5), None, None)
        );
        for bad in [
            "mac=02:00:00:00:00:01",
            "tap=t",
            "tap=t,mac=zz",
            "tap=t,mac=02:00:00:00:00:01,speed=9",
            "tap=t,mac=02:00:00:00:00:01,rx-bps=fast",
            "tap=t,mac=02:00:00:00:00:01,mtu=70000",
            "fd=x,mac=02:00:00:00:00:01",
            "tap",
        ] {
            assert!(parse_net(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn flags_override_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("vm.json");
        std::fs::write(&f, r#"{"kernel":"/k","memory_mib":256,"cmdline":"a"}"#).unwrap();
        let args = Args::parse_from([
            "ark-vmm",
            "--config",
            f.to_str().unwrap(),
            "--memory",
            "64",
            "--no-rng",
        ]);
        let c = config_from(args).unwrap();
        assert_eq!(c.memory_mib, 64);
        assert_eq!(c.cmdline, "a");
        assert!(!c.rng);
        let bad = Args::parse_from(["ark-vmm", "--kernel", "/k", "--vcpus", "0"]);
        assert!(config_from(bad).unwrap_err().contains("vcpus"));
        assert!(config_from(Args::parse_from(["ark-vmm"])).is_err());
    }
}
