fn main() {
    eprintln!("ark-vmm: not built yet");
    std::process::exit(1);
}
