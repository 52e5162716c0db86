fn main() {
    eprintln!("stage1-kvm: not built yet");
    std::process::exit(1);
}
