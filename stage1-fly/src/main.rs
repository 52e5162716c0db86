//! ark-stage1-fly: host namespaces, chroot into the stage1 root, guest-init as an ordinary
//! subreaper process (like rkt fly), for trusted system software. Shares all of its code
//! with stage1-ns; the differences are in `ark_stage1_ns::Isolation::Fly`.

fn main() {
    let code = match ark_os::fds::cloexec_inherited_or_report("ark-stage1-fly") {
        Ok(()) => ark_stage1_ns::main(ark_stage1_ns::Isolation::Fly),
        Err(code) => code,
    };
    std::process::exit(code);
}
