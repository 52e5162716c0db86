fn main() {
    ark_os::fds::cloexec_inherited_or_exit("ark-stage1-ns");
    std::process::exit(ark_stage1_ns::main(ark_stage1_ns::Isolation::Ns));
}
