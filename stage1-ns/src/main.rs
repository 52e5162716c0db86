fn main() {
    std::process::exit(ark_stage1_ns::main(ark_stage1_ns::Isolation::Ns));
}
