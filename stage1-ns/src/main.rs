fn main() {
    let code = match ark_os::fds::cloexec_inherited_or_report("ark-stage1-ns") {
        Ok(()) => ark_stage1_ns::main(ark_stage1_ns::Isolation::Ns),
        Err(code) => code,
    };
    std::process::exit(code);
}
